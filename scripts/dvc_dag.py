"""The stage graph as a Mermaid flowchart for docs/pipeline.md: `dvc dag`'s edges without the implied ones.

`dvc dag --md` draws an edge for every output a stage reads, so `fetch` points at nearly every stage and the picture
is a tangle; this keeps an edge only where no longer path already connects the two stages (the transitive
reduction), which is the order the stages run in. `python scripts/dvc_dag.py` prints the block to paste.
"""

import subprocess
import sys

import networkx as nx


def stage_graph() -> nx.DiGraph:
    out = subprocess.run(["dvc", "dag", "--dot"], capture_output=True, text=True, check=True).stdout
    graph = nx.DiGraph()
    for line in out.splitlines():
        line = line.strip().rstrip(";")
        if "->" in line:
            a, b = (part.strip().strip('"') for part in line.split("->"))
            graph.add_edge(a, b)
    return graph


def mermaid(graph: nx.DiGraph) -> str:
    reduced = nx.transitive_reduction(graph)
    order = list(nx.topological_sort(graph))
    lines = ["```mermaid", "flowchart LR"]
    lines += [f"  {a} --> {b}" for a in order for b in sorted(reduced.successors(a), key=order.index)]
    return "\n".join(lines + ["```"])


if __name__ == "__main__":
    sys.stdout.write(mermaid(stage_graph()) + "\n")
