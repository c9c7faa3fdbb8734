"""The privacy audit (docs/privacy.md): what a user's adapter reveals about the user, and what the noise defence
(p2p.profiles.noise) costs. metrics.py: the figures and their intervals; attacks.py: adapter features and the
attacker's probes; audit.py: one task's attacks on P2P's and OPPU's adapters."""
