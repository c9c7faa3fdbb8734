"""The request checks of p2p/server/protocol.py, called directly: each refusal's status, message, field and code are
what the client reads (tests/test_serve.py and test_serve_hostile.py drive the same checks through a real server)."""

from __future__ import annotations

import pytest

from p2p.server.protocol import (
    MAX_CHARS_PER_TOKEN,
    MAX_USER_CHARS,
    ApiError,
    ChatRequest,
    ProfileBody,
    parameter_error,
    parse,
    path_user,
    require_chars_fit,
    require_known_task,
    require_profile_fits,
    require_served_model,
    require_tokens_fit,
    route_error,
    token_budget,
)

MODEL = "tiny"


def chat(**fields) -> ChatRequest:
    return parse(ChatRequest, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]} | fields)


def refusal(check, *args) -> dict:
    with pytest.raises(ApiError) as caught:
        check(*args)
    return {"status": caught.value.status, **caught.value.body()["error"]}


def test_parse_names_the_first_bad_field_as_a_dotted_path():
    assert parse(ProfileBody, {"profile": "likes films", "task": "LaMP-2M"}).task == "LaMP-2M"
    assert refusal(parse, ChatRequest, {"model": MODEL, "messages": [{"role": "user", "content": 42}]}) == {
        "status": 400, "type": "invalid_request_error", "param": "messages.0.content", "code": "invalid_value",
        "message": 'messages.0.content: expected a string or a list of text parts ({"type": "text", "text": "..."})'}
    assert refusal(parse, ChatRequest, [1, 2])["param"] is None
    assert refusal(parse, ProfileBody, {"profile": "x", "colour": "red"})["param"] == "colour"
    assert refusal(parse, ChatRequest, {"model": MODEL, "messages": [{"role": "user"}], "n": 2})["message"] == \
        "n: only n = 1 is served"


def test_path_user_decodes_the_id_exactly_as_sent():
    assert path_user(b"/v1/profiles/%C3%A9") == "é"
    assert path_user(b"/v1/profiles/bob/?x=1") == "bob"
    assert refusal(path_user, b"/v1/profiles/%ff") == {
        "status": 400, "type": "invalid_request_error", "param": "user", "code": "invalid_value",
        "message": "user: the id's percent-encoding is not UTF-8"}
    assert path_user(b"/v1/profiles/" + b"u" * MAX_USER_CHARS) == "u" * MAX_USER_CHARS
    assert refusal(path_user, b"/v1/profiles/" + b"u" * (MAX_USER_CHARS + 1))["message"] == \
        f"user: expected 1 to {MAX_USER_CHARS} characters"


def test_an_unknown_model_is_a_404():
    require_served_model(MODEL, MODEL)
    assert refusal(require_served_model, "gpt-4o", MODEL) == {
        "status": 404, "type": "not_found_error", "param": "model", "code": "model_not_found",
        "message": "model: 'gpt-4o' is not served here; this server serves 'tiny'"}


def test_a_profile_over_the_servers_cap_is_refused():
    require_profile_fits("x" * 10, 10)
    answer = refusal(require_profile_fits, "x" * 11, 10)
    assert (answer["status"], answer["param"], answer["code"]) == (400, "profile", "profile_too_long")
    assert answer["message"].startswith("profile: 11 characters; this server embeds at most 10 (")


def test_a_task_must_be_in_the_registry():
    require_known_task(None)
    require_known_task("LaMP-2M")
    answer = refusal(require_known_task, "LaMP-99")
    assert (answer["status"], answer["param"], answer["code"]) == (400, "task", "invalid_value")
    assert answer["message"].startswith("task: ") and "LaMP-99" in answer["message"] and "\n" not in answer["message"]


def test_the_token_budget_defaults_caps_and_covers_min_tokens():
    assert token_budget(chat(), 256, 1024) == 256
    assert token_budget(chat(max_tokens=7), 256, 1024) == 7
    assert token_budget(chat(max_tokens=7, max_completion_tokens=9), 256, 1024) == 9
    assert refusal(token_budget, chat(max_tokens=2000), 256, 1024) == {
        "status": 400, "type": "invalid_request_error", "param": "max_tokens", "code": "invalid_value",
        "message": "max_tokens: at most 1024 on this server, got 2000"}
    assert refusal(token_budget, chat(max_tokens=5, min_tokens=6), 256, 1024) == {
        "status": 400, "type": "invalid_request_error", "param": "min_tokens", "code": "invalid_value",
        "message": "min_tokens: 6 is more than max_tokens 5"}


def test_a_prompt_too_long_for_the_context_is_refused_by_characters_then_by_tokens():
    fits = chat(messages=[{"role": "user", "content": "x" * (100 * MAX_CHARS_PER_TOKEN)}])
    require_chars_fit(fits.messages, 100, 10**9)
    over = chat(messages=[{"role": "user", "content": "x" * (100 * MAX_CHARS_PER_TOKEN + 1)}])
    assert refusal(require_chars_fit, over.messages, 100, 10**9) == {
        "status": 400, "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded",
        "message": f"messages: {100 * MAX_CHARS_PER_TOKEN + 1} characters cannot fit the model's context of 100 "
                   f"tokens"}
    require_chars_fit(over.messages, 0, 10**9)  # no stated context: the body's cap bounds the characters
    assert refusal(require_chars_fit, over.messages, 0, 100)["code"] == "context_length_exceeded"
    require_tokens_fit(90, 10, 100)
    require_tokens_fit(10**6, 10, 0)
    assert refusal(require_tokens_fit, 91, 10, 100)["message"] == \
        "messages: 91 prompt tokens + max_tokens 10 exceed the model's context of 100"


def test_routes_and_parameters_refused_by_the_framework_read_as_openai_errors():
    assert route_error(404, "GET", "/v1/nothing", "Not Found", None).body()["error"] == {
        "type": "not_found_error", "param": None, "code": None, "message": "no route /v1/nothing"}
    assert route_error(405, "DELETE", "/v1/chat/completions", "Method Not Allowed", {"Allow": "POST"}).message == \
        "DELETE is not allowed on /v1/chat/completions"
    assert route_error(400, "GET", "/", "Bad", None).message == "Bad"
    error = parameter_error([{"loc": ("path", "user"), "msg": "field required"}])
    assert (error.status, error.param, error.message) == (400, "user", "user: field required")
