"""The README is a user guide that works as written.

Every command of the README's shell blocks (and every Python block) is run, in README order, in a fresh
copy of the repository with an environment that holds nothing but ``PATH`` and a temporary ``HOME``:
what a new user has after cloning. ``COMMANDS`` says how each README command is run and what it must
show; a command with no entry there fails the test, and so does an entry the README no longer shows.

* The copy holds the working tree's files (``git ls-files``: tracked, plus new files not ignored), with
  their modification times. Its ``.venv`` is a directory of symlinks to this checkout's venv, plus its
  own install stamps (``.venv/.installed-<extra>``, newer than the copy's ``pyproject.toml``), so the
  Makefile installs nothing: the stamps are written only after checking that the shared venv satisfies
  ``pyproject.toml`` for that extra, and every ``make`` target is dry-run first (``make -n``) and must
  not call pip. The shared venv itself is never written to.
* The package is an editable install of this checkout; the commands find the project from their working
  directory (:func:`campaign_pipeline.storage.locations.project_root`), so every file they write (``data/``,
  ``.env``, ``delivery.png``) lands in the copy.
* Long-running servers (``make dev``, ``make notebook``, ``campaign-pipeline simulator``) are started on
  a free port, checked to answer with the demo's data, then stopped with SIGINT (Ctrl-C), as a user would.
* "Pointing it at a real CINNOX app" is followed with the README's own rehearsal: the built-in simulator
  (``campaign-pipeline simulator``) stands in for the app in ``.env``. Nothing here reaches the network.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pytest

from campaign_pipeline.config import environment_variable_names

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
VENV = Path(sys.prefix)
SHELL_LANGUAGES = {"bash", "sh", "shell"}
KNOWN_LANGUAGES = SHELL_LANGUAGES | {"python", "text", "sql", "yaml"}
DEMO_DAYS = 7  # `make demo`: the last 7 complete days
TABLE_ASSETS = ("campaigns", "sms_messages", "whatsapp_messages", "rejected_records")
#: The extras whose install stamps the copy's make targets need (demo: core; dev, test, lint: dev; ...).
STAMPED_EXTRAS = ("core", "dev", "notebook", "sql")


# ---------------------------------------------------------------------------------------------
# Reading the README
# ---------------------------------------------------------------------------------------------


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """Every fenced block of ``text`` as (language, body), in order."""
    blocks, language, body = [], None, []
    for line in text.splitlines():
        fence = re.match(r"^\s*```\s*([\w+-]*)\s*$", line)
        if fence and language is None:
            language, body = fence.group(1), []
        elif fence:
            blocks.append((language, "\n".join(body) + "\n"))
            language = None
        elif language is not None:
            body.append(line)
    assert language is None, "an unclosed fenced block"
    return blocks


def without_comment(line: str) -> str:
    """``line`` without its trailing shell comment (a ``#`` after whitespace, outside quotes)."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip()
    return line.rstrip()


def readme_steps(text: str) -> list[tuple[str, str]]:
    """The README's steps in order: ("shell", command) for each command line of a shell block (its
    comment removed), ("python", code) for each Python block."""
    steps = []
    for language, body in fenced_blocks(text):
        if language == "python":
            steps.append(("python", body))
        elif language in SHELL_LANGUAGES:
            for line in body.replace("\\\n", " ").splitlines():
                command = without_comment(line).strip()
                if command:
                    steps.append(("shell", command))
    return steps


def readme_commands(text: str) -> list[str]:
    return [command for kind, command in readme_steps(text) if kind == "shell"]


# ---------------------------------------------------------------------------------------------
# The copy of the repository, and a user's shell in it
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def copy_repository(dest: Path) -> None:
    """The working tree's files (tracked, and new ones not ignored) with their modification times."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_symlink() or source.is_file():  # a tracked file deleted in the work tree is skipped
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)


def unmet_requirements(pyproject: Path, extra: str) -> list[str]:
    """What ``pyproject``'s dependencies (``core``) or extra ask for that the running venv lacks."""
    from importlib import metadata

    from packaging.requirements import Requirement

    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = project["dependencies"] if extra == "core" else project["optional-dependencies"][extra]
    unmet = []
    for text in wanted:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        if requirement.name == project["name"]:  # an extra that includes other extras
            unmet += [item for nested in requirement.extras for item in unmet_requirements(pyproject, nested)]
            continue
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            unmet.append(f"{text} (not installed)")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            unmet.append(f"{text} ({version} installed)")
    return unmet


def link_venv(copy: Path) -> None:
    """``copy/.venv``: symlinks to this checkout's venv, and the copy's own install stamps."""
    venv = copy / ".venv"
    venv.mkdir()
    for entry in VENV.iterdir():
        if not entry.name.startswith(".installed-"):
            (venv / entry.name).symlink_to(entry)
    unmet = {extra: unmet_requirements(copy / "pyproject.toml", extra) for extra in STAMPED_EXTRAS}
    unmet = {extra: items for extra, items in unmet.items() if items}
    assert not unmet, f"{VENV} does not satisfy pyproject.toml (run `make test` to reinstall): {unmet}"
    for extra in STAMPED_EXTRAS:
        (venv / f".installed-{extra}").touch()


@dataclass
class Server:
    proc: subprocess.Popen
    log: Path
    port: int

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@dataclass
class Session:
    """A user's shell in the copy: an environment with only PATH and HOME, plus whatever the README's
    own commands add to the shell (``set -a; . ./.env; set +a``)."""

    repo: Path
    home: Path
    logs: Path
    prefix: list[str] = field(default_factory=list)
    servers: list[Server] = field(default_factory=list)
    app: Server | None = None  # the simulator standing in for a real CINNOX app

    @property
    def env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home)}

    def script(self, command: str) -> str:
        return "\n".join([*self.prefix, command])

    def sh(self, command: str, stdin: str | None = None, timeout: float = 180,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", self.script(command)], cwd=self.repo, env=env or self.env, input=stdin,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def ok(self, command: str, **options) -> subprocess.CompletedProcess:
        result = self.sh(command, **options)
        assert result.returncode == 0, (f"`{command}` exited {result.returncode}\n"
                                        f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-3000:]}")
        return result

    def recipe(self, target: str) -> str:
        """What ``make <target>`` runs here; it must not install anything into the shared venv."""
        dry = self.ok(f"make -n {target}").stdout
        installs = re.search(r"-m pip\b|\bpip3? install\b|-m venv\b|\btouch\b", dry)
        assert installs is None, f"make {target} would install into {VENV}:\n{dry}"
        return dry.strip()

    def make(self, target: str, **options) -> subprocess.CompletedProcess:
        self.recipe(target)
        return self.ok(f"make {target}", **options)

    def start(self, command: str, port: int, ready: Callable[[Server], bool], timeout: float = 180) -> Server:
        """Start a long-running ``command`` (in a session of its own) and wait until ``ready``."""
        log = self.logs / f"server-{len(self.servers)}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(["bash", "-c", self.script(f"exec {command}")], cwd=self.repo, env=self.env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        server = Server(proc, log, port)
        self.servers.append(server)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"`{command}` exited {proc.returncode}:\n{server.output()}"
            try:
                if ready(server):
                    return server
            except (OSError, ValueError, KeyError, TypeError):
                pass
            time.sleep(0.5)
        pytest.fail(f"`{command}` did not answer within {timeout:.0f} s:\n{server.output()}")

    def stop(self, server: Server, grace: float = 60) -> None:
        """Ctrl-C: SIGINT to the server's process group; it must exit within ``grace`` seconds."""
        os.killpg(server.proc.pid, signal.SIGINT)
        try:
            server.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pytest.fail(f"Ctrl-C did not stop the server within {grace:.0f} s:\n{server.output()}")
        finally:
            kill_group(server)

    def close(self) -> None:
        for server in self.servers:
            kill_group(server)


def kill_group(server: Server) -> None:
    try:
        os.killpg(server.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def http_json(url: str, data: dict | None = None, headers: dict[str, str] | None = None):
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def only_number(output: str) -> int:
    """The one number a query printed (the DuckDB CLI's box format, or plain)."""
    numbers = re.findall(r"^[\s│|]*(\d+)[\s│|]*$", output, flags=re.MULTILINE)
    assert len(numbers) == 1, f"expected one number in:\n{output}"
    return int(numbers[0])


def analysts_count(session: Session, query: str) -> int:
    with duckdb.connect(str(session.repo / "data" / "demo" / "analytics.duckdb"), read_only=True) as con:
        return con.execute(query).fetchone()[0]


# ---------------------------------------------------------------------------------------------
# How each README command is run, and what it must show
# ---------------------------------------------------------------------------------------------


def demo(session: Session, command: str) -> None:
    result = session.make(command.removeprefix("make "), timeout=300)
    assert "delivery_rate" in result.stdout and f"backfill done: {DEMO_DAYS} day(s)" in result.stderr
    assert (session.repo / "data" / "demo" / "analytics.duckdb").is_file()
    # The next steps the demo prints are the README's.
    printed = re.findall(r"^  (\S.*?)\s+#", result.stdout.split("\nnext:\n", 1)[1], flags=re.MULTILINE)
    assert printed and set(printed) <= set(readme_commands(README.read_text())), printed


def report_by_campaign(session: Session, command: str) -> None:
    result = session.ok(command)
    assert f"reading {session.repo / 'data' / 'demo'} (the data dir the last run used" in result.stderr
    header, _rule, *rows = result.stdout.strip().splitlines()
    assert "campaign_id" in header and len(rows) >= DEMO_DAYS


def report_by_country(session: Session, command: str) -> None:
    result = session.ok(command)
    assert result.stdout.startswith("recipient_country,messages,") and "SMS only" in result.stderr
    assert len(result.stdout.strip().splitlines()) > 1


def notebook(session: Session, command: str) -> None:
    recipe = session.recipe(command.removeprefix("make "))
    # JupyterLab refuses root without --allow-root (containers, CI): the Makefile adds it for root.
    root_flag = " --allow-root" if os.geteuid() == 0 else ""
    assert recipe == f".venv/bin/jupyter-lab{root_flag} notebooks/delivery_rates.ipynb", recipe
    port, token = free_port(), "readme-test"
    options = ["--no-browser", f"--port={port}", f"--IdentityProvider.token={token}"]
    auth = {"Authorization": f"token {token}"}

    def ready(server: Server) -> bool:
        # Opened on the notebook: the server's root is notebooks/.
        model = http_json(f"http://127.0.0.1:{port}/api/contents/delivery_rates.ipynb?content=0", headers=auth)
        return model["type"] == "notebook"

    server = session.start(f"{recipe} {shlex.join(options)}", port, ready, timeout=120)
    specs = http_json(f"http://127.0.0.1:{port}/api/kernelspecs", headers=auth)
    assert specs["default"] == "python3"
    session.stop(server)
    # Run All, as the user then does: the kernel starts in notebooks/ with the user's environment.
    import nbformat
    from nbclient import NotebookClient

    book = nbformat.read(session.repo / "notebooks" / "delivery_rates.ipynb", as_version=4)
    NotebookClient(book, kernel_name="python3", timeout=120).execute(cwd=str(session.repo / "notebooks"),
                                                                     env=session.env)
    outputs = [o for cell in book.cells if cell.cell_type == "code" for o in cell.outputs]
    errors = [f"{o.ename}: {o.evalue}" for o in outputs if o.output_type == "error"]
    assert errors == []
    stderr = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stderr")
    assert f"reading {session.repo / 'data' / 'demo'} (the data dir the last run used" in stderr, stderr


def report_chart(session: Session, command: str) -> None:
    result = session.ok(command)
    assert (session.repo / "delivery.png").read_bytes().startswith(b"\x89PNG")
    assert "chart: delivery.png" in result.stderr


def dagster_ui(session: Session, command: str) -> None:
    recipe = session.recipe(command.removeprefix("make "))
    assert recipe == ".venv/bin/campaign-pipeline ui", recipe
    port = free_port()
    query = {"query": "{ assetNodes { assetKey { path } partitionStats { numMaterialized } "
                      "metadataEntries { label } } }"}
    nodes: dict[str, dict] = {}

    def ready(server: Server) -> bool:
        payload = http_json(f"http://127.0.0.1:{port}/graphql", data=query)
        nodes.clear()
        nodes.update({"/".join(n["assetKey"]["path"]): n for n in payload["data"]["assetNodes"]})
        return "sms_messages" in nodes

    server = session.start(f"{recipe} --port {port}", port, ready, timeout=180)
    assert "Dagster UI on the demo's data in" in server.output()
    assert set(nodes) >= {"raw_campaign_responses", *TABLE_ASSETS}
    materialized = {key: (node["partitionStats"] or {}).get("numMaterialized") for key, node in nodes.items()}
    assert all(materialized[key] == DEMO_DAYS for key in ("raw_campaign_responses", *TABLE_ASSETS)), materialized
    for key in TABLE_ASSETS:
        assert "dagster/column_schema" in {entry["label"] for entry in nodes[key]["metadataEntries"]}, key
    session.stop(server)


def make_sql(session: Session, command: str) -> None:
    result = session.make(command.removeprefix("make "), stdin="SELECT count(*) FROM sms_messages;\n", timeout=60)
    assert only_number(result.stdout) == analysts_count(session, "SELECT count(*) FROM sms_messages") > 0


def sql_query(session: Session, command: str) -> None:
    result = session.ok(command)
    assert "SMS" in result.stdout and "WhatsApp" in result.stdout and "delivery_rate" in result.stdout


def sql_print_path(session: Session, command: str) -> None:
    result = session.ok(command)
    assert result.stdout.strip() == str(session.repo / "data" / "demo" / "analytics.duckdb")


def own_duckdb_cli(session: Session, command: str) -> None:
    # The analyst's own DuckDB CLI: the PyPI duckdb-cli in .venv (the sql extra) stands in for it.
    env = {**session.env, "PATH": f"{session.repo / '.venv' / 'bin'}{os.pathsep}{session.env['PATH']}"}
    version = session.ok("duckdb --version", env=env).stdout
    assert version.startswith("v1.5."), version
    result = session.ok(command, stdin="SELECT count(*) FROM campaigns;\n", env=env)
    assert only_number(result.stdout) == analysts_count(session, "SELECT count(*) FROM campaigns") > 0


def copy_env_file(session: Session, command: str) -> None:
    session.ok(command)
    # The user fills in .env. Here the README's rehearsal: the built-in simulator stands in for the
    # app, in a data dir of its own, as "Without an app: the simulator" says.
    session.app = start_simulator(session)
    filled = {"CINNOX_BASE_URL": f"http://127.0.0.1:{session.app.port}", "CINNOX_APP_ID": "sim-app",
              "CINNOX_APP_TOKEN": "sim-token", "CAMPAIGN_DATA_DIR": "./data/rehearsal"}
    dotenv = session.repo / ".env"
    text = dotenv.read_text()
    for name, value in filled.items():
        text, found = re.subn(rf"^{name}=.*$", f"{name}={value}", text, flags=re.MULTILINE)
        assert found == 1, f".env.example has no {name}= line to fill in"
    dotenv.write_text(text)


def load_env_file(session: Session, command: str) -> None:
    result = session.ok(command)
    assert result.stderr == "", result.stderr
    session.prefix.append(command)  # what it exports stays for every later command of the shell


def backfill(days: int, done: str = "day partition(s) published") -> Callable[[Session, str], None]:
    def run(session: Session, command: str) -> None:
        assert session.app is not None and session.app.proc.poll() is None, "the app stand-in is not running"
        result = session.ok(command, timeout=300)
        assert f"backfill done: {days} day(s)" in result.stderr and done in result.stderr, result.stderr
        assert f"data_dir={session.repo / 'data' / 'rehearsal'}" in result.stderr
    return run


def report_after_backfill(session: Session, command: str) -> None:
    result = session.ok(command)
    assert f"reading {session.repo / 'data' / 'rehearsal'} (CAMPAIGN_DATA_DIR" in result.stderr
    assert "2024-05-01" in result.stdout and "2024-05-03" in result.stdout


def start_simulator(session: Session, command: str = ".venv/bin/campaign-pipeline simulator --port 8765") -> Server:
    """The README's simulator command, on a free port instead of 8765."""
    port = free_port()
    assert "--port 8765" in command, command

    def ready(server: Server) -> bool:
        params = "startAt=2024-05-01T00:00:00Z&endAt=2024-05-01T23:59:59Z&offset=0&limit=500"
        answer = http_json(f"http://127.0.0.1:{port}/v1/api/apps/sim-app/data/sent-campaigns-summary?{params}",
                           headers={"Authorization": "Bearer sim-token"})
        return answer["code"] == 0 and len(answer["result"]) > 0

    return session.start(command.replace("--port 8765", f"--port {port}"), port, ready, timeout=60)


def simulator(session: Session, command: str) -> None:
    server = start_simulator(session, command)
    assert f"listening on http://127.0.0.1:{server.port}" in server.output()
    session.stop(server)


def simulator_help(session: Session, command: str) -> None:
    result = session.ok(command)
    assert result.stdout.startswith("usage: campaign-pipeline simulator") and "--fault-rate" in result.stdout


def settings_help(session: Session, command: str) -> None:
    result = session.ok(command)
    missing = [name for name in environment_variable_names() if name not in result.stdout]
    assert missing == []


def make_lint(session: Session, command: str) -> None:
    session.make(command.removeprefix("make "), timeout=120)


def python_block(session: Session, code: str) -> None:
    result = session.ok(".venv/bin/python -", stdin=code)
    assert "delivery_rate" in result.stdout, result.stdout


SQL_EXAMPLE = (".venv/bin/campaign-pipeline sql -c \"SELECT channel, sum(messages) AS messages, "
               "delivery_rate(sum(delivered), sum(messages), sum(in_flight)) AS delivery_rate "
               "FROM delivery_rates_daily GROUP BY channel ORDER BY channel\"")

#: Every README command: how it is run here (a function of the session and the command), or why it is
#: not run (a string).
COMMANDS: dict[str, Callable[[Session, str], None] | str] = {
    "make demo": demo,
    "make test": "not run: this test is part of `make test`, which would run it again (recursion)",
    ".venv/bin/campaign-pipeline report --by campaign": report_by_campaign,
    ".venv/bin/campaign-pipeline report --by country --format csv": report_by_country,
    "make notebook": notebook,
    ".venv/bin/campaign-pipeline report --chart delivery.png": report_chart,
    "make dev": dagster_ui,
    "make sql": make_sql,
    SQL_EXAMPLE: sql_query,
    ".venv/bin/campaign-pipeline sql --print-path": sql_print_path,
    "duckdb -readonly data/demo/analytics.duckdb": own_duckdb_cli,
    "cp .env.example .env": copy_env_file,
    "set -a; . ./.env; set +a": load_env_file,
    ".venv/bin/campaign-pipeline backfill --start 2024-05-01 --end 2024-05-03": backfill(3),
    ".venv/bin/campaign-pipeline report": report_after_backfill,
    ".venv/bin/campaign-pipeline simulator --port 8765": simulator,
    ".venv/bin/campaign-pipeline simulator --help": simulator_help,
    '.venv/bin/python -c "from campaign_pipeline.config import settings_help; print(settings_help())"':
        settings_help,
    ".venv/bin/campaign-pipeline backfill --start 2024-05-01 --end 2024-05-03 --resplit": backfill(3),
    ".venv/bin/campaign-pipeline backfill --start 2024-05-01 --end 2024-05-03 --dagster":
        backfill(3, "materializations, run "),
    ".venv/bin/campaign-pipeline backfill --start 2024-05-02 --end 2024-05-02 --allow-shrink": backfill(1),
    "make lint": make_lint,
    "make bench": "not run: about 10 minutes, and it rewrites benchmarks/RESULTS.md (its own record)",
}


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------


def test_the_readme_opens_with_the_two_commands_of_a_fresh_machine():
    lines = README.read_text().splitlines()
    assert lines[0] == "# campaign_pipeline" and lines[1] == "" and lines[2] == "```bash"
    assert [without_comment(line) for line in lines[3:5]] == ["make demo", "make test"] and lines[5] == "```"


def test_every_readme_command_says_how_it_is_run():
    text = README.read_text()
    languages = {language for language, _body in fenced_blocks(text)}
    assert "" not in languages, "a fenced block without a language: say bash, python, text..."
    assert languages <= KNOWN_LANGUAGES, languages - KNOWN_LANGUAGES
    commands = readme_commands(text)
    assert [c for c in commands if c not in COMMANDS] == [], "README commands with no entry in COMMANDS"
    assert [c for c in COMMANDS if c not in commands] == [], "COMMANDS entries the README no longer shows"
    not_run = [c for c in commands if isinstance(COMMANDS[c], str)]
    assert not_run == ["make test", "make bench"], not_run  # everything else runs offline


@pytest.mark.slow
def test_every_readme_command_works_as_written_in_a_fresh_copy(tmp_path):
    if not (VENV / "bin" / "campaign-pipeline").is_file() or shutil.which("git") is None:
        pytest.skip("needs the project's .venv (make test) and git")
    repo, home, logs = tmp_path / "repo", tmp_path / "home", tmp_path / "logs"
    home.mkdir()
    logs.mkdir()
    copy_repository(repo)
    link_venv(repo)
    session = Session(repo, home, logs)
    ran, timings = [], []
    try:
        for kind, step in readme_steps(README.read_text()):
            started = time.monotonic()
            if kind == "python":
                python_block(session, step)
            else:
                how = COMMANDS[step]
                if isinstance(how, str):
                    continue
                how(session, step)
            ran.append(step)
            timings.append(f"{time.monotonic() - started:5.1f}s  {step.splitlines()[0][:90]}")
    finally:
        session.close()
        print("\n".join(timings))
    assert len(ran) == len([s for s in readme_steps(README.read_text())
                            if s[0] == "python" or not isinstance(COMMANDS[s[1]], str)])
