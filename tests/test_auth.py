"""Bearer tokens: POST needs one when tokens are set; health stays open; metrics on request."""

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from support import Logwriters, stop_service, wait_until
from traffic import Load, check_files

from service.app import create_app, runtime
from service.auth import BearerTokens, Token
from service.settings import Settings, SettingsError

TOKENS = ("s3cret-one", "other-Token_2")
ANY_STREAM = tuple(Token(secret) for secret in TOKENS)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[FlaskClient]:
    app = create_app(Settings(dir=tmp_path, tokens=ANY_STREAM))
    writer = runtime(app).writer
    writer.start()
    yield app.test_client()
    writer.stop()


@pytest.mark.unit
@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong",
        "Basic czNjcmV0LW9uZQ==",
        "s3cret-one",
        "Bearer s3cret-on",
        "Bearer s3cret-one2",
    ],
)
def test_post_without_a_valid_token_is_401_and_writes_nothing(
    client: FlaskClient, tmp_path: Path, header: str | None
):
    headers = {} if header is None else {"Authorization": header}
    answer = client.post("/v1/logs/s?ack=written", data=b"x\n", headers=headers)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="logwriter"'
    assert answer.json == {"error": "missing or invalid bearer token"}
    assert not (tmp_path / "s.log").exists()


@pytest.mark.unit
@pytest.mark.parametrize("token", TOKENS)
def test_any_configured_token_may_write(client: FlaskClient, tmp_path: Path, token: str):
    answer = client.post(
        "/v1/logs/s?ack=written", data=b"x\n", headers={"Authorization": f"bearer  {token} "}
    )
    assert answer.status_code == 200
    assert (tmp_path / "s.log").read_bytes() == b"x\n"


@pytest.mark.unit
def test_health_readiness_and_metrics_stay_open_by_default(client: FlaskClient):
    assert [client.get(path).status_code for path in ("/healthz", "/readyz", "/metrics")] == [
        200,
        200,
        200,
    ]


@pytest.mark.unit
def test_metrics_can_require_a_token(tmp_path: Path):
    app = create_app(Settings(dir=tmp_path, tokens=ANY_STREAM, metrics_auth=True))
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    authorized = client.get("/metrics", headers={"Authorization": f"Bearer {TOKENS[0]}"})
    assert authorized.status_code == 200
    assert client.get("/healthz").status_code == 503  # writer not started here, but not 401


@pytest.mark.unit
def test_no_tokens_means_open(tmp_path: Path):
    assert not BearerTokens([]).required
    app = create_app(Settings(dir=tmp_path))
    runtime(app).writer.start()
    try:
        client = app.test_client()
        bare = client.post("/v1/logs/s?ack=written", data=b"no header\n")
        assert (bare.status_code, bare.json) == (200, {"accepted": 1})
        ignored = {"Authorization": "Bearer anything"}  # nothing to match, nothing checked
        anything = client.post("/v1/logs/s?ack=written", data=b"any\n", headers=ignored)
        assert anything.status_code == 200
        assert client.get("/metrics").status_code == 200
    finally:
        runtime(app).writer.stop()
    assert (tmp_path / "s.log").read_bytes() == b"no header\nany\n"


@pytest.mark.unit
def test_a_configured_token_is_found_with_the_bearer_scheme_only():
    token = Token("a", ("app-*",))
    tokens = BearerTokens([Token("b"), token])
    assert tokens.find("Bearer a") is token
    assert tokens.find("bearer   a ") is token
    assert tokens.find("Basic a") is None
    assert tokens.find("Bearer c") is None


@pytest.mark.unit
def test_a_scoped_token_writes_only_to_its_streams(tmp_path: Path):
    tokens = (Token("tenant", ("app-*", "web")), Token("ops"))
    app = create_app(Settings(dir=tmp_path, tokens=tokens, metrics_auth=True))
    runtime(app).writer.start()
    try:
        client = app.test_client()
        tenant = {"Authorization": "Bearer tenant"}
        for stream in ("app-1", "app-", "web"):
            answer = client.post(f"/v1/logs/{stream}?ack=written", data=b"ok\n", headers=tenant)
            assert answer.status_code == 200, stream
        for stream in ("web2", "App-1", "default", "other"):
            answer = client.post(f"/v1/logs/{stream}?ack=written", data=b"no\n", headers=tenant)
            assert answer.status_code == 403, stream
            assert answer.json == {"error": f"this token may not write to {stream}"}
        refused = client.post("/v1/logs?ack=written", data=b"no\n", headers=tenant)
        assert refused.status_code == 403  # the default stream is a stream like any other
        ops = client.post(
            "/v1/logs/other?ack=written", data=b"ops\n", headers={"Authorization": "Bearer ops"}
        )
        assert ops.status_code == 200
        assert client.get("/metrics", headers=tenant).status_code == 403
        assert client.get("/metrics", headers={"Authorization": "Bearer ops"}).status_code == 200
    finally:
        runtime(app).writer.stop()
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "app-.log",
        "app-1.log",
        "other.log",
        "web.log",
    ]
    assert (tmp_path / "other.log").read_bytes() == b"ops\n"


@pytest.mark.unit
def test_tokens_from_env_and_file(tmp_path: Path):
    token_file = tmp_path / "tokens"
    token_file.write_text("# ops team\nfrom-file\n\n  spaced  \ntenant app-*, web\ntabbed\tapi-?\n")
    settings = Settings.from_env(
        {"LOGWRITER_TOKENS": "a, b,,", "LOGWRITER_TOKENS_FILE": str(token_file)}
    )
    assert settings.tokens == (
        Token("a"),
        Token("b"),
        Token("from-file"),
        Token("spaced"),
        Token("tenant", ("app-*", "web")),
        Token("tabbed", ("api-?",)),
    )
    assert "from-file" not in repr(settings) and "tenant" not in repr(settings)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"LOGWRITER_TOKENS_FILE": "/nonexistent/tokens"}, "cannot read"),
        ({"LOGWRITER_TOKENS": "has space"}, "printable ASCII without spaces"),
        ({"LOGWRITER_TOKENS": "caf\u00e9"}, "printable ASCII without spaces"),
        ({"LOGWRITER_METRICS_AUTH": "true"}, "needs tokens"),
        ({"LOGWRITER_TOKENS_FILE": "TOKEN_FILE:t app-*,"}, "line 1: an empty stream pattern"),
        ({"LOGWRITER_TOKENS_FILE": "TOKEN_FILE:t app web"}, "line 1: stream patterns are comma"),
        ({"LOGWRITER_METRICS_AUTH": "maybe", "LOGWRITER_TOKENS": "a"}, "true or false"),
    ],
)
def test_bad_token_settings_are_named(env: dict[str, str], words: str, tmp_path: Path):
    for name, value in env.items():
        if value.startswith("TOKEN_FILE:"):
            token_file = tmp_path / "tokens"
            token_file.write_text(value.removeprefix("TOKEN_FILE:") + "\n")
            env = {**env, name: str(token_file)}
    with pytest.raises(SettingsError, match=words):
        Settings.from_env(env)


@pytest.mark.service
def test_tokens_never_reach_the_log(start_logwriter: Logwriters):
    service = start_logwriter(
        env={"LOGWRITER_TOKENS": "tok-visible-nowhere", "GUNICORN_CMD_ARGS": "--access-logfile -"}
    )
    good = service.request(
        "POST", "/v1/logs/a", b"x\n", {"Authorization": "Bearer tok-visible-nowhere"}
    )
    bad = service.request("POST", "/v1/logs/a", b"x\n", {"Authorization": "Bearer tok-guess"})
    assert (good.status, bad.status) == (202, 401)
    stop_service(service)  # its log complete
    log = service.log_text()
    assert '"POST /v1/logs/a HTTP/1.1" 202' in log  # the access log is on
    assert "tok-visible-nowhere" not in log and "tok-guess" not in log


@pytest.mark.unit
def test_an_otlp_request_with_a_stream_outside_the_tokens_scope_is_refused_whole(tmp_path: Path):
    def resource(service: str) -> dict[str, object]:
        attribute = {"key": "service.name", "value": {"stringValue": service}}
        record = {"body": {"stringValue": f"from {service}"}}
        return {"resource": {"attributes": [attribute]}, "scopeLogs": [{"logRecords": [record]}]}

    app = create_app(Settings(dir=tmp_path, tokens=(Token("tenant", ("app-*",)),)))
    runtime(app).writer.start()
    try:
        client = app.test_client()
        tenant = {"Authorization": "Bearer tenant"}
        mixed = {"resourceLogs": [resource("app-1"), resource("other")]}
        answer = client.post("/otlp/v1/logs?ack=written", json=mixed, headers=tenant)
        assert answer.status_code == 403
        assert answer.json == {"code": 7, "message": "this token may not write to other"}
        forced = client.post("/otlp/other/v1/logs", json={"resourceLogs": []}, headers=tenant)
        assert forced.status_code == 403
        mine = {"resourceLogs": [resource("app-1")]}
        assert (
            client.post("/otlp/v1/logs?ack=written", json=mine, headers=tenant).status_code == 200
        )
    finally:
        runtime(app).writer.stop()
    assert [path.name for path in tmp_path.iterdir()] == ["app-1.log"]
    assert b'"body":"from app-1"' in (tmp_path / "app-1.log").read_bytes()


@pytest.mark.service
def test_sighup_takes_a_new_tokens_file_without_losing_a_line(start_logwriter: Logwriters):
    tokens = start_logwriter.folder / "tokens"
    tokens.write_text("keep\nold\n")
    service = start_logwriter(workers=2, env={"LOGWRITER_TOKENS_FILE": str(tokens)})

    def status(token: str, stream: str) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        return service.request("POST", f"/v1/logs/{stream}?ack=written", b"x\n", headers).status

    load = Load(service.port, clients=4, headers={"Authorization": "Bearer keep"}).start()
    try:
        wait_until(lambda: load.acked_lines() > 3_000, 60, "3,000 acknowledged lines")
        assert (status("old", "app-1"), status("new", "app-1")) == (200, 401)
        workers = set(service.worker_pids())
        tokens.write_text("keep\nnew app-*\n")
        service.signal(signal.SIGHUP)
        wait_until(lambda: not workers & set(service.worker_pids()), 60, "new workers")
        wait_until(lambda: service.metric("logwriter_writer_alive") == 2, 30, "their writers")
        assert (status("old", "app-1"), status("new", "app-1"), status("new", "other")) == (
            401,
            200,
            403,
        )
        tokens.write_text("keep\nbroken token line\n")  # not valid: the settings stay
        service.signal(signal.SIGHUP)
        wait_until(lambda: "settings not reloaded" in service.log_text(), 30, "the refusal")
        acked = load.acked_lines()
        wait_until(lambda: load.acked_lines() > acked + 2_000, 60, "lines after the HUPs")
    finally:
        load.stop()
    assert set(load.statuses) <= {200, 202}, load.statuses  # "keep" worked throughout
    stop_service(service)
    check_files([service.dir / "load.log"], load.acked)
