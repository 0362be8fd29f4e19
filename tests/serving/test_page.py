"""The playground page that ``tqstar serve`` serves at ``/`` (src/tqstar/serving/static/).

- Its pure logic (``logic.js``: the request it sends, the SSE reader, colours, the step table's order, the
  figures, error messages) runs under node's built-in test runner (``node --test tests/js/``).
- The page itself runs in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by
  Selenium) against a real ``tqstar serve`` process on the tiny models: the rendered answers must equal what the
  API answers to the same requests (same seed), a token's step table must be the API's trace row for that step,
  a 400 must show the server's message, keyboard and phone width must work, and the browser console must stay
  free of errors. Screenshots go to ``tests-artifacts/page/``.

Without node, selenium or the browser (``make browser`` installs it with apt-get) those tests are *skipped with
the reason*.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tqstar._http import JsonClient
from tqstar.errors import ServerRejectedError
from tqstar.testing.servers import ServerProcess, free_port, servers_dir

ROOT = Path(__file__).resolve().parents[2]
JS_TESTS = ROOT / "tests" / "js" / "logic.test.mjs"
ARTIFACTS = ROOT / "tests-artifacts" / "page"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
MAX_ALPHA = 10  # the test server's cap on α, so that α = 50 is refused with a 400
PROMPT = "How do I make a cup of tea?"


def test_page_logic_under_node():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed, so logic.js is not tested (apt-get install nodejs, node >= 20)")
    proc = subprocess.run([node, "--test", str(JS_TESTS)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    summary = dict(re.findall(r"^# (pass|fail) (\d+)$", proc.stdout, re.M))
    assert proc.returncode == 0 and summary.get("fail") == "0", proc.stdout[-6000:] + proc.stderr[-2000:]
    assert int(summary["pass"]) >= 15, proc.stdout[-2000:]


# ---- the page in a browser ------------------------------------------------------------------------------------
def browser_unavailable() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    missing = [name for name, found in (("chromium", chromium_binary()), ("chromedriver", shutil.which("chromedriver")))
               if not found]
    if not missing:
        return None
    failed = servers_dir() / "browser.FAILED"
    why = failed.read_text().strip() if failed.exists() else "run `make browser` (scripts/browser.sh) to install it"
    return f"{' and '.join(missing)} not found: {why}"


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    reason = browser_unavailable()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium_binary()
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    browser.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield browser
    browser.quit()


def start_serve(tiny_paths, work: Path, env: dict[str, str] | None = None, **extra) -> ServerProcess:
    """A real ``tqstar serve`` process on the tiny models: a plain SFT preset and a TQ* preset (and ``extra``)."""
    for module in ("fastapi", "uvicorn"):
        pytest.importorskip(module, reason=f"`tqstar serve` needs {module}: pip install -e '.[serve]'")
    config = {
        "sft": str(tiny_paths["sft"]), "baseline": str(tiny_paths["baseline"]),
        "reward": "sentiment",  # declares its range [-1, 1], so candidates get pruned
        "decode": {"k": 4, "alpha": 2.0, "rollout_len": 3, "max_new_tokens": 8},
        # prune_probe values the top candidates first, so the rest can be pruned without a reused rollout
        "presets": {"tiny-sft": {"method": "sft"}, "tiny-tq": {"method": "tq-direct", "prune_probe": 2}},
        "limits": {"max_alpha": MAX_ALPHA, "max_tokens": 32},
    }
    for key, value in extra.items():
        config[key] = {**config[key], **value}
    (work / "serve.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    argv = [sys.executable, "-m", "tqstar.cli", "serve", "--config", str(work / "serve.yaml"), "--port", str(port)]
    return ServerProcess("tqstar", argv, port, work / "serve.log", env=env, ready_timeout_s=180)


@pytest.fixture(scope="module")
def server(tiny_paths, tmp_path_factory):
    """The URL of the tiny server the page is loaded from."""
    with start_serve(tiny_paths, tmp_path_factory.mktemp("serve")) as process:
        yield process.url + "/"


def load(driver, url: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true", \
        driver.find_element(By.ID, "form-error").text


def fill(driver, **values: str) -> None:
    from selenium.webdriver.common.by import By

    for name, value in values.items():
        field = driver.find_element(By.ID, name)
        field.clear()
        field.send_keys(value)


def generate(driver, timeout: float = 120) -> list[dict]:
    """Click Generate, wait until both answers ended; returns the two request bodies the page sent."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.ID, "generate").click()
    body = driver.find_element(By.TAG_NAME, "body")
    WebDriverWait(driver, timeout).until(lambda d: body.get_attribute("data-done") == "true")
    return json.loads(body.get_attribute("data-requests"))


def console_errors(driver, allowed_status: int | None = None) -> list[dict]:
    """The browser's SEVERE console entries, except the network entry of a deliberately refused request."""
    entries = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    if allowed_status is not None:
        entries = [e for e in entries if not (e["source"] == "network" and f"status of {allowed_status}" in e["message"])]
    return entries


def api_answer(url: str, request: dict) -> dict:
    """The same request through the public API, not streamed (trace included)."""
    body = {k: v for k, v in request.items() if k != "stream_options"}
    return JsonClient(url, retries=0).post("/v1/chat/completions", {**body, "stream": False})


def candidate_order(row: dict) -> list[int]:
    """The step table's order: score descending (pruned, scoreless candidates last), ties by log π_sft."""
    order = sorted(range(len(row["candidates"])), key=lambda i: (
        row["score"][i] is None, -(row["score"][i] or 0.0), -row["logp_sft"][i]))
    return [row["candidates"][i] for i in order]


def same(shown: str, value: float | None) -> bool:
    """A number the page holds (JS ``String(v)``) equals the API's up to float32 noise: two identical requests to
    one server already differ in the last float32 bits of a log-prob (measured; the backend reuses cached
    prefixes), while the tokens, candidates and choices are the same."""
    if value is None:
        return shown == "null"
    return math.isclose(float(shown), value, rel_tol=1e-5, abs_tol=1e-6)


def number(text: str) -> float:
    return float(text.replace("−", "-").split()[0])


def text_of(driver, element) -> str:
    return driver.execute_script("return arguments[0].textContent", element)


@pytest.mark.browser
def check_step(driver, span, step: int, row: dict) -> None:
    """The token's colour rank and its step table (order, numbers, chosen / pruned / reused) against ``row``."""
    from selenium.webdriver.common.by import By

    rank = sorted(row["logp_sft"], reverse=True).index(row["logp_sft"][row["candidates"].index(row["chosen"])])
    assert span.get_attribute("data-rank") == str(rank)
    span.click()
    panel = driver.find_element(By.CSS_SELECTOR, "#answer-b .step")
    assert panel.is_displayed() and panel.get_attribute("data-step") == str(step)
    rows = panel.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert [int(r.get_attribute("data-token-id")) for r in rows] == candidate_order(row)
    by_id = {z: i for i, z in enumerate(row["candidates"])}
    for tr in rows:
        i = by_id[int(tr.get_attribute("data-token-id"))]
        for attr, key in (("data-logp", "logp_sft"), ("data-q", "q"), ("data-score", "score"), ("data-p", "p_dec")):
            assert same(tr.get_attribute(attr), row[key][i]), (attr, tr.get_attribute(attr), row[key][i])
        badges = {b.text for b in tr.find_elements(By.CLASS_NAME, "badge")}
        expected = {name for name, on in (("chosen", row["candidates"][i] == row["chosen"]),
                                          ("pruned", row["pruned"][i]), ("reused", row["reused"][i])) if on}
        assert badges == expected and set(tr.get_attribute("class").split()) == expected


def test_streamed_answers_and_steps_match_the_api(driver, server):
    from selenium.webdriver.common.by import By

    load(driver, server)
    assert driver.find_element(By.ID, "preset-a").get_attribute("value") == "tiny-sft"
    assert driver.find_element(By.ID, "preset-b").get_attribute("value") == "tiny-tq"
    assert driver.find_element(By.ID, "alpha").get_attribute("max") == str(MAX_ALPHA)
    defaults = {name: driver.find_element(By.ID, name).get_attribute("value") for name in
                ("alpha", "k", "rollout_len", "temperature", "max_tokens", "seed")}
    assert defaults == {"alpha": "2", "k": "4", "rollout_len": "3", "temperature": "0", "max_tokens": "8",
                        "seed": ""}  # tiny-tq's; no seed: the server draws one
    assert not driver.find_element(By.ID, "alpha").get_attribute("disabled")  # tiny-tq uses it
    assert driver.find_element(By.ID, "seed").get_attribute("disabled")  # both greedy: no seed matters
    fill(driver, prompt=PROMPT, alpha="1", k="8", rollout_len="2", max_tokens="7")
    requests = generate(driver)
    assert requests[1]["tqstar"] == {"trace": True, "alpha": 1, "k": 8, "rollout_len": 2}
    assert requests[0]["tqstar"] == {}  # the SFT preset takes no α, k, rollout length or trace
    assert [r["max_tokens"] for r in requests] == [7, 7] and [r["temperature"] for r in requests] == [0, 0]
    assert all("seed" not in r for r in requests)
    assert requests[0]["messages"] == [{"role": "user", "content": PROMPT}]
    driver.save_screenshot(str(ARTIFACTS / "generated.png"))
    ran = driver.find_element(By.CSS_SELECTOR, "#answer-b .params").text
    assert ran.startswith("ran: method tq-direct · k 8 · alpha 1 · n_rollouts 1 · rollout_len 2 · temperature 0"
                          " · max_tokens 7 · seed "), ran
    note = driver.find_element(By.CSS_SELECTOR, "#answer-a .kl-note").text  # greedy: what its KL means
    assert "−log π_sft(chosen token)" in note

    for column, request in zip(("a", "b"), requests):
        section = driver.find_element(By.ID, f"answer-{column}")
        assert section.get_attribute("data-state") == "done", section.text
        api = api_answer(server, request)
        shown = text_of(driver, section.find_element(By.CLASS_NAME, "tokens"))
        assert shown == api["choices"][0]["message"]["content"]
        assert shown.strip(), "the answer is empty: nothing was compared"
        figures = {d.get_attribute("data-key"): d.find_element(By.TAG_NAME, "dd").text
                   for d in section.find_elements(By.CSS_SELECTOR, ".summary > div")}
        assert abs(number(figures["reward"]) - api["tqstar"]["reward"]) <= 6e-4
        steps = api["tqstar"]["accounting"]["steps"] or len(api["tqstar"]["trace"])
        assert abs(number(figures["rollouts"]) - api["tqstar"]["accounting"]["rollouts"] / steps) <= 6e-3

    # Open the TQ* answer's step with the most candidates pruned, and one with a reused rollout if there is one.
    trace = api_answer(server, requests[1])["tqstar"]["trace"]
    spans = driver.find_elements(By.CSS_SELECTOR, "#answer-b .tok[data-step]")
    assert len(spans) == len(trace)
    pruned = max(range(len(trace)), key=lambda i: sum(trace[i]["pruned"]))
    assert any(trace[pruned]["pruned"]), "no candidate was pruned: the test no longer shows pruning"
    reused = [i for i, row in enumerate(trace) if any(row["reused"])]
    for step in [pruned, *reused[:1]]:
        check_step(driver, spans[step], step, trace[step])
        driver.save_screenshot(str(ARTIFACTS / f"step-{step}.png"))

    resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(name.startswith(server) for name in resources), resources  # nothing from a CDN
    assert console_errors(driver) == []


@pytest.mark.browser
def test_a_sampled_answer_shows_its_seed_and_repeats_with_it(driver, server):
    """Temperature above 0 turns the seed on; with it empty the server draws one, the "ran:" line shows it, and the
    same seed gives the same answers again (and the API's)."""
    from selenium.webdriver.common.by import By

    load(driver, server)
    fill(driver, prompt=PROMPT, temperature="0.8", max_tokens="6")
    assert not driver.find_element(By.ID, "seed").get_attribute("disabled")
    requests = generate(driver)
    assert all(r["temperature"] == 0.8 and "seed" not in r for r in requests)
    ran = driver.find_element(By.CSS_SELECTOR, "#answer-b .params").text
    seed = int(re.search(r"seed (\d+)", ran).group(1))
    first = [text_of(driver, driver.find_element(By.CSS_SELECTOR, f"#answer-{c} .tokens")) for c in "ab"]
    assert not driver.find_elements(By.CSS_SELECTOR, "#answer-a .kl-note")  # sampled: its KL needs no note
    fill(driver, seed=str(seed))
    again = generate(driver)
    assert [r["seed"] for r in again] == [seed, seed]
    second = [text_of(driver, driver.find_element(By.CSS_SELECTOR, f"#answer-{c} .tokens")) for c in "ab"]
    assert second[1] == first[1] == api_answer(server, again[1])["choices"][0]["message"]["content"]
    assert console_errors(driver) == []


@pytest.mark.browser
def test_with_api_keys_the_page_asks_for_one(driver, tiny_paths, tmp_path):
    """The page's 401 path: a server with API keys refuses the page's first reads; the page opens the API key field
    and says why; with the key typed in it loads the presets and generates."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with start_serve(tiny_paths, tmp_path, env={"TQSTAR_API_KEYS": "page-key"}) as s:
        driver.get(s.url + "/")
        body = driver.find_element(By.TAG_NAME, "body")
        WebDriverWait(driver, 30).until(lambda d: body.get_attribute("data-ready"))
        assert body.get_attribute("data-ready") == "error"
        assert driver.find_element(By.ID, "auth").get_attribute("open") is not None
        message = driver.find_element(By.ID, "form-error").text
        assert "API key" in message and "Authorization: Bearer" in message, message
        driver.save_screenshot(str(ARTIFACTS / "api-key.png"))
        key = driver.find_element(By.ID, "api-key")
        key.send_keys("page-key")
        driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
        WebDriverWait(driver, 30).until(lambda d: body.get_attribute("data-ready") == "true")
        assert driver.find_element(By.ID, "form-error").get_attribute("hidden") is not None
        fill(driver, prompt=PROMPT, max_tokens="3")
        generate(driver)
        states = [driver.find_element(By.ID, f"answer-{c}").get_attribute("data-state") for c in "ab"]
        # seen failing once in a full fresh-clone run (passing alone and on rerun): say what the answers showed
        assert states == ["done", "done"], [driver.find_element(By.ID, f"answer-{c}").text for c in "ab"]
        assert console_errors(driver, allowed_status=401) == []


@pytest.mark.browser
def test_out_of_range_alpha_shows_the_servers_message(driver, server):
    from selenium.webdriver.common.by import By

    load(driver, server)
    fill(driver, prompt=PROMPT, alpha="50", max_tokens="3")
    requests = generate(driver)
    with pytest.raises(ServerRejectedError) as refused:
        api_answer(server, requests[1])
    assert refused.value.status == 400
    tq = driver.find_element(By.ID, "answer-b")
    assert tq.get_attribute("data-state") == "error"
    shown = tq.find_element(By.CSS_SELECTOR, ".error").text
    assert "alpha" in shown and f"<= {MAX_ALPHA}" in shown and "50" in shown
    assert shown.split(" (field")[0] == refused.value.detail
    assert driver.find_element(By.ID, "alpha").get_attribute("aria-invalid") == "true"
    assert driver.find_element(By.ID, "answer-a").get_attribute("data-state") == "done"  # the other answer is fine
    driver.save_screenshot(str(ARTIFACTS / "error.png"))
    assert console_errors(driver, allowed_status=400) == []


@pytest.mark.browser
def test_a_block_step_shows_its_sampled_candidates(driver, tiny_paths, tmp_path):
    """A blockwise preset: the span that opens a decision shows its k sampled blocks — text, Q̂, the choice's
    probability, chosen / duplicate badges — as the API's trace row has them, in the choice's order."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    presets = {"tiny-block": {"method": "tq-direct", "block_len": 3, "temperature": 1.0}}
    with start_serve(tiny_paths, tmp_path, presets=presets) as process:
        url = process.url + "/"
        load(driver, url)
        Select(driver.find_element(By.ID, "preset-b")).select_by_value("tiny-block")
        # the temperature control goes to both answers; the seed field opens once one of them samples
        fill(driver, prompt=PROMPT, k="5", max_tokens="7", temperature="1", seed="3")
        requests = generate(driver)
        api = api_answer(url, requests[1])
        trace = api["tqstar"]["trace"]
        section = driver.find_element(By.ID, "answer-b")
        assert section.get_attribute("data-state") == "done"
        assert text_of(driver, section.find_element(By.CLASS_NAME, "tokens")) == api["choices"][0]["message"]["content"]
        spans = section.find_elements(By.CSS_SELECTOR, ".tok[data-step]")
        assert len(spans) == len(trace) >= 2  # one span opens each decision (7 tokens, blocks of 3)
        for step, (span, row) in enumerate(zip(spans, trace)):
            assert span.get_attribute("data-level") == "block"
            span.click()
            panel = section.find_element(By.CLASS_NAME, "step")
            assert panel.is_displayed() and f"Block at token {row['step']}: 5 sampled blocks" in panel.text
            shown = panel.find_elements(By.CSS_SELECTOR, "tbody tr")
            order = sorted(range(5), key=lambda i: (-row["p_dec"][i], -(row["q"][i] or 0.0), i))
            assert [int(tr.get_attribute("data-token-id")) for tr in shown] == order
            for tr, i in zip(shown, order):
                assert same(tr.get_attribute("data-q"), row["q"][i]) and same(tr.get_attribute("data-p"), row["p_dec"][i])
                badges = {b.text for b in tr.find_elements(By.CLASS_NAME, "badge")}
                assert badges == {name for name, on in (("chosen", i == row["chosen"]),
                                                        ("duplicate", row["duplicate"][i])) if on}
                assert text_of(driver, tr.find_element(By.TAG_NAME, "code")).replace("␣", " ") in (
                    row["texts"][i], "∅")
            driver.save_screenshot(str(ARTIFACTS / f"block-{step}.png"))
        assert console_errors(driver) == []


@pytest.mark.browser
def test_keyboard_and_phone_width(driver, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.set_window_size(390, 844)
    try:
        load(driver, server)
        fill(driver, prompt=PROMPT, max_tokens="4")
        generate(driver)
        spans = driver.find_elements(By.CSS_SELECTOR, "#answer-b .tok[data-step]")
        assert len(spans) >= 2
        driver.execute_script("arguments[0].focus()", spans[0])
        driver.switch_to.active_element.send_keys(Keys.TAB)
        assert driver.switch_to.active_element == spans[1]
        spans[1].send_keys(Keys.ENTER)
        panel = driver.find_element(By.CSS_SELECTOR, "#answer-b .step")
        assert panel.is_displayed() and panel.get_attribute("data-step") == "1"
        assert driver.switch_to.active_element == panel
        driver.save_screenshot(str(ARTIFACTS / "phone.png"))
        panel.send_keys(Keys.ESCAPE)
        assert not panel.is_displayed() and driver.switch_to.active_element == spans[1]
        width = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"the page scrolls sideways at a phone's width: {width}"
        assert console_errors(driver) == []
    finally:
        driver.set_window_size(1280, 1000)


@pytest.mark.slow
@pytest.mark.browser
def test_playground_on_smollm2(driver, tmp_path):
    """The docs' screenshot (docs/playground.png): SmolLM2 greedy vs TQ* steered by its DPO baseline towards VADER
    sentiment (setups/serve-smollm2.yaml), 24 tokens, the step of the token that moved furthest from the SFT
    model opened. Writes tests-artifacts/page/playground-smollm2.png."""
    from selenium.webdriver.common.by import By

    from tqstar.builtin.models import smollm2_dir
    from tqstar.errors import ModelLoadError

    try:
        smollm2_dir()
    except ModelLoadError as exc:
        pytest.skip(f"SmolLM2 is not installed ({exc}); make models installs it")
    port = free_port()
    argv = [sys.executable, "-m", "tqstar.cli", "serve", "--config", str(ROOT / "setups" / "serve-smollm2.yaml"),
            "--port", str(port)]
    with ServerProcess("tqstar", argv, port, tmp_path / "serve.log", ready_timeout_s=300) as process:
        driver.set_window_size(1280, 1380)
        try:
            load(driver, process.url + "/")
            assert [driver.find_element(By.ID, f"preset-{c}").get_attribute("value") for c in "ab"] == \
                ["smollm2-sft", "smollm2-tq"]
            fill(driver, prompt="Tell me about your day at the park.", max_tokens="24")
            generate(driver, timeout=600)
            for column in "ab":
                state = driver.find_element(By.ID, f"answer-{column}").get_attribute("data-state")
                assert state == "done", driver.find_element(By.ID, f"answer-{column}").text
            spans = driver.find_elements(By.CSS_SELECTOR, "#answer-b .tok[data-step]")
            furthest = max(spans, key=lambda s: (s.get_attribute("data-level") != "0", s.get_attribute("data-level")))
            furthest.click()
            driver.execute_script("window.scrollTo(0, 0)")
            driver.save_screenshot(str(ARTIFACTS / "playground-smollm2.png"))
            assert console_errors(driver) == []
        finally:
            driver.set_window_size(1280, 1000)


@pytest.mark.browser
def test_a_full_queue_shows_the_servers_429(driver, tiny_paths, tmp_path):
    """One row, one queue place: while a slow API stream holds the row, one of the page's two requests waits and
    the other is refused with 429; the page says the server is busy there and finishes the other answer."""
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    slow = {"method": "tq-direct", "k": 10, "rollout_len": 20, "prune": False, "reuse_rollouts": False}
    with start_serve(tiny_paths, tmp_path, presets={"slow": slow}, limits={"max_batch": 1, "max_queue": 1, "max_tokens": 400}) as s:
        load(driver, s.url + "/")
        fill(driver, prompt=PROMPT, max_tokens="3")
        with httpx.Client(timeout=60) as client:
            request = client.build_request("POST", s.url + "/v1/completions", json={
                "model": "slow", "prompt": PROMPT, "max_tokens": 400, "stream": True})  # runs until closed
            holder = client.send(request, stream=True)
            try:
                assert holder.status_code == 200
                lines = holder.iter_lines()  # kept alive until the end: the stream stays open
                next(line for line in lines if line.startswith("data:"))  # decoding: it holds the one row
                driver.find_element(By.ID, "generate").click()
                states = lambda d: [d.find_element(By.ID, f"answer-{c}").get_attribute("data-state") for c in "ab"]  # noqa: E731
                WebDriverWait(driver, 60).until(lambda d: "error" in states(d))
            finally:
                holder.close()  # frees the row: the waiting request runs
        body = driver.find_element(By.TAG_NAME, "body")
        WebDriverWait(driver, 120).until(lambda d: body.get_attribute("data-done") == "true")
        assert sorted(states(driver)) == ["done", "error"]
        busy = driver.find_element(By.CSS_SELECTOR, ".answer[data-state=error] .error").text
        assert busy.startswith("The server is busy: the server's queue is full (1 requests waiting)"), busy
        driver.save_screenshot(str(ARTIFACTS / "busy.png"))
        assert console_errors(driver, allowed_status=429) == []
