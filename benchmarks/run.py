"""`make bench`: the contenders side by side on the CINNOX simulator, in one run -> benchmarks/RESULTS.md.

Contenders, each run as a subprocess (wall clock around it, peak RSS of its process tree):

* a: ``benchmarks/bare_fetch.py``, sequential ``requests`` + JSON decode of every page: the floor.
* b: ``campaign-pipeline backfill --start D1 --end Dn``, the product's CLI, no ``DAGSTER_HOME``,
  ``CINNOX_RATE_LIMIT_PER_MIN=1000000`` (the paced workload keeps the default budget, 480/min).
* c: ``benchmarks/dlt_contender.py``, dlt ``rest_api`` with its defaults into DuckDB.
* r: ``campaign-pipeline backfill --resplit`` on the data dir b has just filled, with
  ``CINNOX_BASE_URL`` on a closed port: any API call would fail the run.

Each workload gets its own simulator subprocess (detail pages pre-rendered, ``--now`` frozen). The
contenders take turns; 1x and 10x, judged by ratios, run ``--repeat`` rounds (median wall, largest RSS).
Request counts come from the simulator's counters (``--stats-path``), read before and after each run.

    .venv/bin/python benchmarks/run.py                  # everything: about 10 min on an idle 2-core machine
    .venv/bin/python benchmarks/run.py --quick          # tiny sizes, 1 round: .work/RESULTS-quick.md
    .venv/bin/python benchmarks/run.py --only paced,b   # re-measure some, merged into the last results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import metadata
from pathlib import Path

import duckdb
import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
BENCH, WORK = ROOT / "benchmarks", ROOT / "benchmarks" / ".work"
PYTHON = sys.executable
CLI = str(Path(PYTHON).parent / "campaign-pipeline")
NOW, LAST_DAY, SEED, STATS_PATH = "2024-05-20T00:00:00Z", date(2024, 5, 19), 7, "/_stats"
CLIENT_BUDGET, ENFORCED_LIMIT, RSS_LIMIT_MB = 480, 500, 300
LABELS = {
    "a": "a: bare fetch (requests, sequential)",
    "b": "b: campaign-pipeline backfill",
    "c": "c: dlt rest_api (defaults)",
    "r": "r: campaign-pipeline backfill --resplit (API on a closed port)",
}


@dataclass(frozen=True)
class Workload:
    """Days (ending LAST_DAY) x campaigns per day x recipients per campaign, and who runs on it."""

    name: str
    days: int
    campaigns: int
    recipients: int  # the mean size, or with rmin/rmax: every size uniform in [rmin, rmax]
    contenders: str
    repeat: bool  # judged by ratios: --repeat rounds
    rmin: int | None = None
    rmax: int | None = None
    rate_limit: int | None = None  # enforced by the simulator

    @property
    def start(self) -> date:
        """First day."""
        return LAST_DAY - timedelta(days=self.days - 1)

    def describe(self) -> str:
        """E.g. ``7 days x 20 campaigns/day x ~1,000 recipients``."""
        size = f"~{self.recipients:,}" if self.rmin is None else f"{self.rmin:,}-{self.rmax:,}"
        size = f"{self.rmin:,}" if self.rmin is not None and self.rmin == self.rmax else size
        days, per_day = f"{self.days} day{'s' * (self.days > 1)}", f"campaign{'s' * (self.campaigns > 1)}/day"
        text = f"{days} x {self.campaigns:,} {per_day} x {size} recipients"
        return text + (f", simulator enforcing {self.rate_limit}/min" if self.rate_limit else "")


def workloads(quick: bool) -> list[Workload]:
    """The workloads, in the order they run."""
    if quick:
        return [
            Workload("1x", 2, 4, 300, "abc", True),
            Workload("10x", 2, 4, 3_000, "abr", True),
            Workload("many-small", 1, 200, 3, "ab", False, rmin=1, rmax=5),
            Workload("one-huge", 1, 1, 20_000, "ab", False, rmin=20_000, rmax=20_000),
            Workload("paced", 1, 4, 3_000, "b", False, rate_limit=ENFORCED_LIMIT),
        ]
    return [
        Workload("1x", 7, 20, 1_000, "abc", True),
        Workload("10x", 7, 20, 10_000, "abr", True),
        Workload("many-small", 1, 2_000, 3, "ab", False, rmin=1, rmax=5),
        Workload("one-huge", 1, 1, 300_000, "ab", False, rmin=300_000, rmax=300_000),
        # ~775 requests: the simulator's 60 s window fills, so a client above 500/min would see 429s
        Workload("paced", 2, 20, 10_000, "b", False, rate_limit=ENFORCED_LIMIT),
    ]


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def clean_env(**overrides: str) -> dict[str, str]:
    """This environment without pipeline, Dagster or dlt settings, plus ``overrides``."""
    drop = ("CINNOX_", "CAMPAIGN_", "DAGSTER_HOME", "RUNTIME__", "EXTRACT__", "NORMALIZE__", "LOAD__")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, "PYTHONUNBUFFERED": "1", **overrides}


# ---------------------------------------------------------------------------- simulator


@dataclass
class Simulator:
    """A running ``python -m campaign_pipeline.simulator``."""

    process: subprocess.Popen
    base_url: str
    app_id: str
    token: str
    startup_s: float

    def stats(self) -> dict:
        """The simulator's request counters (reading them is not counted)."""
        return requests.get(self.base_url + STATS_PATH, timeout=30).json()


@contextmanager
def simulator(w: Workload):
    """Start a simulator serving ``w`` with its detail pages pre-rendered; stop it on exit."""
    args = (
        f"--port 0 --seed {SEED} --now {NOW} --campaigns-per-day {w.campaigns} --recipients-per-campaign "
        f"{w.recipients} --prerender-start {w.start} --prerender-end {LAST_DAY} --stats-path {STATS_PATH}"
    )
    args += f" --recipients-min {w.rmin} --recipients-max {w.rmax}" if w.rmin is not None else ""
    args += f" --rate-limit-per-min {w.rate_limit}" if w.rate_limit else ""
    cmd = [PYTHON, "-m", "campaign_pipeline.simulator", *args.split()]
    started = time.perf_counter()
    with open(WORK / "logs" / f"{w.name}-simulator.stderr", "wb") as err:
        process = subprocess.Popen(cmd, cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, stderr=err)
    try:
        ready, _, _ = select.select([process.stdout], [], [], 900)
        line = process.stdout.readline().decode() if ready else ""
        match = re.search(r"listening on (\S+) app_id=(\S+) token=(\S+)", line)
        if not match:
            raise RuntimeError(f"simulator did not start, see .work/logs/{w.name}-simulator.stderr")
        yield Simulator(process, *match.groups(), time.perf_counter() - started)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def warm_up(sim: Simulator, w: Workload) -> None:
    """Request every summary listing the contenders will ask for once, so no timed run pays for it."""
    url = f"{sim.base_url}/v1/api/apps/{sim.app_id}/data/sent-campaigns-summary"
    days = [w.start + timedelta(days=d) for d in range(w.days)]
    windows = [(f"{d}T00:00:00.000Z", f"{d + timedelta(days=1)}T00:00:00.000Z") for d in days]
    windows.append((f"{w.start}T00:00:00.000Z", f"{LAST_DAY}T23:59:59.999Z"))  # dlt's one window
    for start_at, end_at in windows:
        offset, page = 0, [None] * 500
        while len(page) == 500:
            params = {"startAt": start_at, "endAt": end_at, "offset": offset, "limit": 500}
            headers = {"Authorization": f"Bearer {sim.token}"}
            page = requests.get(url, params=params, headers=headers, timeout=600).json()["result"]
            offset += len(page)


# ---------------------------------------------------------------------------- measuring


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (all cores)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def own_cpu_s(sim_pid: int) -> float:
    """CPU seconds of this script, its waited-for children and the simulator."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    try:
        sim = sum(psutil.Process(sim_pid).cpu_times()[:2])
    except psutil.Error:
        sim = 0.0
    return sum(u.ru_utime + u.ru_stime for u in usage) + sim


def wait_for_quiet(max_wait_s: float) -> None:
    """Wait (at most ``max_wait_s``) until the machine is below 15% busy over 2 s: others share it."""
    deadline = time.monotonic() + max_wait_s
    while time.monotonic() < deadline and psutil.cpu_percent(interval=2.0) > 15:
        pass


def measure(cmd: list[str], env: dict[str, str], name: str, sim_pid: int) -> dict:
    """Run ``cmd``: exit code, wall s, peak RSS MB of its process tree (polled every 50 ms), and
    ``other_load``: cores kept busy meanwhile by processes outside the benchmark."""
    peak, stop = [0], threading.Event()

    def poll(pid: int) -> None:
        while not stop.is_set():
            try:
                root = psutil.Process(pid)
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in [root, *root.children(True)]))
            except psutil.Error:
                pass
            stop.wait(0.05)

    os.sync()  # the previous run's dirty pages are not this run's work
    busy0, own0 = busy_cpu_s(), own_cpu_s(sim_pid)
    with (
        open(WORK / "logs" / f"{name}.stdout", "wb") as out,
        open(WORK / "logs" / f"{name}.stderr", "wb") as err,
    ):
        started = time.perf_counter()
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err)
        poller = threading.Thread(target=poll, args=(process.pid,), daemon=True)
        poller.start()
        code = process.wait()
        wall = time.perf_counter() - started
        stop.set()
        poller.join()
    other = (busy_cpu_s() - busy0) - (own_cpu_s(sim_pid) - own0)
    return {
        "exit": code,
        "wall_s": round(wall, 3),
        "rss_mb": round(peak[0] / 2**20, 1),
        "other_load": round(max(0.0, other) / wall, 2),
    }


def count_rows(db: Path, query: str) -> int | None:
    """``query``'s single number from the DuckDB file ``db`` (None if it cannot be read)."""
    try:
        with duckdb.connect(str(db), read_only=True) as con:
            return int(con.execute(query).fetchone()[0])
    except (duckdb.Error, OSError, TypeError):
        return None


def closed_port_url() -> str:
    """``http://127.0.0.1:PORT`` with nothing listening on PORT."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def run_one(c: str, w: Workload, sim: Simulator, rnd: int, quiet_s: float) -> dict:
    """One timed run of contender ``c`` on ``w`` in round ``rnd``; r reuses b's data dir of the round."""
    name, days = f"{w.name}-{c}-{rnd}", ["--start", str(w.start), "--end", str(LAST_DAY)]
    data_dir = WORK / "runs" / f"{w.name}-{rnd}" / ("dlt" if c == "c" else "b")
    api = ["--base-url", sim.base_url, "--app-id", sim.app_id, "--token", sim.token, *days]
    b_env = {
        "CAMPAIGN_SOURCE": "cinnox",
        "CINNOX_BASE_URL": sim.base_url if c == "b" else closed_port_url(),
        "CINNOX_APP_ID": sim.app_id,
        "CINNOX_APP_TOKEN": sim.token,
        "CAMPAIGN_DATA_DIR": str(data_dir),
        "CAMPAIGN_PARTITION_START": str(w.start),
        "CAMPAIGN_PARTITION_TZ": "UTC",
    }
    if not w.rate_limit:  # paced: the client's default budget
        b_env["CINNOX_RATE_LIMIT_PER_MIN"] = "1000000"
    if c in "bc":
        shutil.rmtree(data_dir, ignore_errors=True)
    cmd, env = {
        "a": ([PYTHON, str(BENCH / "bare_fetch.py"), *api], clean_env()),
        "b": ([CLI, "backfill", *days], clean_env(**b_env)),
        "c": ([PYTHON, str(BENCH / "dlt_contender.py"), *api, "--work-dir", str(data_dir)], clean_env()),
        "r": ([CLI, "backfill", *days, "--resplit"], clean_env(**b_env)),
    }[c]
    wait_for_quiet(quiet_s)
    before = sim.stats()
    run = {"contender": c, "round": rnd, **measure(cmd, env, name, sim.process.pid)}
    after = sim.stats()
    run["requests"] = after["requests_total"] - before["requests_total"]
    run["throttled"] = after["throttled"] - before["throttled"]
    run["first_request_at"], run["last_request_at"] = after["first_request_at"], after["last_request_at"]
    if c == "a" and run["exit"] == 0:
        out = json.loads((WORK / "logs" / f"{name}.stdout").read_text())
        sizes = list(out["campaign_sizes"].values()) or [0]
        run.update(rows=out["records"], campaigns=len(out["campaign_sizes"]), min_size=min(sizes))
        run["max_size"] = max(sizes)
    elif c in "br":
        both = " + ".join(f"(SELECT count(*) FROM {t})" for t in ("sms_messages", "whatsapp_messages"))
        run["rows"] = count_rows(data_dir / "warehouse.duckdb", f"SELECT {both}")
    elif c == "c":
        run["rows"] = count_rows(data_dir / "dlt.duckdb", "SELECT count(*) FROM cinnox.campaign_details")
    log(
        f"{name}: exit {run['exit']}, {run['wall_s']:.2f} s, {run['rss_mb']:.0f} MB, {run['requests']} "
        f"requests, {run['throttled']} x 429, {run.get('rows')} rows, other load {run['other_load']}"
    )
    return run


def measure_workload(w: Workload, only: set[str], repeat: int, quiet_s: float) -> dict:
    """Every round of ``w``'s contenders (those ``--only`` keeps), taking turns."""
    keep = only & set(LABELS) | ({"b"} if "r" in only else set())  # r re-splits what b has just loaded
    contenders = [c for c in w.contenders if not keep or c in keep]
    log(f"{w.name}: {w.describe()}; contenders {','.join(contenders)}; starting the simulator")
    entry = {"describe": w.describe(), "measured_at": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"}
    entry.update(commit=commit(), runs=[])
    try:
        with simulator(w) as sim:
            entry["simulator_startup_s"] = round(sim.startup_s, 1)
            if not w.rate_limit:  # paced: the first and last request must be b's
                warm_up(sim, w)
            for rnd in range(1, (repeat if w.repeat else 1) + 1):
                for c in contenders:
                    entry["runs"].append(run_one(c, w, sim, rnd, quiet_s))
                shutil.rmtree(WORK / "runs" / f"{w.name}-{rnd}", ignore_errors=True)
    except Exception as exc:  # noqa: BLE001 - report it and go on with the next workload
        log(f"{w.name} failed: {exc!r}")
        entry["error"] = repr(exc)
    return entry


# ---------------------------------------------------------------------------- report


def commit() -> str:
    """Short HEAD, marked when the measured code has uncommitted changes."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "campaign_pipeline"], capture_output=True, check=False
    )
    return head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def environment() -> dict:
    """The machine and the library versions."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    env = {"cores": len(os.sched_getaffinity(0)), "cpu": cpu.group(1) if cpu else platform.processor()}
    env.update(ram_gib=round(psutil.virtual_memory().total / 2**30, 1), python=platform.python_version())
    env["os"] = f"{platform.system()} {platform.release()}"
    for package in ("dagster", "duckdb", "pyarrow", "dlt", "requests"):
        env[package] = metadata.version(package)
    return env


def summary(entry: dict | None, c: str) -> dict:
    """Contender ``c`` on one workload: median wall of its runs, largest RSS, last rows (None: no run)."""
    runs = [r for r in (entry or {}).get("runs", []) if r["contender"] == c]
    ok = bool(runs) and all(r["exit"] == 0 for r in runs)
    return {
        "runs": runs,
        "all_ok": ok,
        "wall": statistics.median(r["wall_s"] for r in runs) if ok else None,
        "rss": max((r["rss_mb"] for r in runs), default=None),
        "rows": runs[-1].get("rows") if runs else None,
    }


def records_of(entry: dict | None) -> int | None:
    """Detail records of a workload: as fetched by a, else as loaded by b."""
    return next((x["rows"] for x in (summary(entry, "a"), summary(entry, "b")) if x["all_ok"]), None)


def fmt(x: float | None, spec: str = ",.1f", unit: str = "") -> str:
    """``x`` formatted, followed by ``unit``; or n/a."""
    return "n/a" if x is None else format(x, spec) + unit


def targets(wl: dict, plan: dict[str, Workload]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each target of issue 14 (the shapes' sizes as ``plan`` defines them)."""
    out = []
    b1, c1, a10, b10, r10 = (summary(wl.get(k[:-1]), k[-1]) for k in ("1xb", "1xc", "10xa", "10xb", "10xr"))
    bc = c1["wall"] / b1["wall"] if b1["all_ok"] and c1["all_ok"] else None
    out.append(("1x: b >= 10x the records/s of c (dlt)", f"b/c = {fmt(bc, '.1f', 'x')}", (bc or 0) >= 10))
    ba = a10["wall"] / b10["wall"] if a10["all_ok"] and b10["all_ok"] else None
    out.append(("10x: b >= 0.5x the records/s of a", f"b/a = {fmt(ba, '.2f', 'x')}", (ba or 0) >= 0.5))

    bs = {n: summary(wl.get(n), "b") for n in ("1x", "10x", "many-small", "one-huge", "paced")}
    growth = bs["10x"]["rss"] / bs["1x"]["rss"] if bs["10x"]["all_ok"] and bs["1x"]["all_ok"] else None
    failed = ", ".join(n for n, x in bs.items() if not x["all_ok"]) or "none"
    got = ", ".join(f"{n}: {fmt(x['rss'], '.0f', ' MB')}" for n, x in bs.items())
    got += f"; 10x/1x = {fmt(growth, '.2f')}; failed runs: {failed}"
    ok = all(x["all_ok"] and x["rss"] <= RSS_LIMIT_MB for x in bs.values()) and (growth or 9) <= 1.2
    out.append((f"b's peak RSS <= {RSS_LIMIT_MB} MB on every workload, 10x/1x <= 1.2", got, ok))

    paced = summary(wl.get("paced"), "b")
    run = paced["runs"][0] if paced["all_ok"] and paced["runs"][0]["requests"] > 1 else None
    per_min = (run["requests"] - 1) / (run["last_request_at"] - run["first_request_at"]) * 60 if run else None
    share, throttled = per_min and per_min / CLIENT_BUDGET, sum(r["throttled"] for r in paced["runs"])
    target = f"paced, simulator enforcing {ENFORCED_LIMIT}/min: >= 90% of b's {CLIENT_BUDGET}/min, no 429"
    got = f"{fmt(per_min, '.1f', '/min')} from first to last request = {fmt(share, '.1%')} of "
    got += f"{CLIENT_BUDGET}/min ({fmt(run and run['requests'], ',')} requests); {throttled} x 429"
    out.append((target, got, paced["all_ok"] and (share or 0) >= 0.9 and throttled == 0))

    small, huge = plan["many-small"], plan["one-huge"]  # full run: >= 2,000 of 1-5; one of >= 300,000
    shapes = {"many-small": lambda a: a["campaigns"] >= small.campaigns and a["max_size"] <= small.rmax}
    shapes["one-huge"] = lambda a: a["campaigns"] == 1 and a["rows"] >= huge.rmin
    for n, shape_ok in shapes.items():
        a, b = summary(wl.get(n), "a"), summary(wl.get(n), "b")
        a_run = a["runs"][0] if a["all_ok"] else {"campaigns": 0, "min_size": 0, "max_size": 0, "rows": -1}
        got = f"{a_run['campaigns']:,} campaign(s) of {a_run['min_size']:,}-{a_run['max_size']:,} recipients"
        got += f"; b: exit {', '.join(str(r['exit']) for r in b['runs'])}, {fmt(b['rss'], '.0f', ' MB')}"
        got += f", {fmt(b['rows'], ',')} rows"
        ok = a["all_ok"] and shape_ok(a_run) and b["all_ok"] and b["rss"] <= RSS_LIMIT_MB
        target = f"{n}: b loads every record, exit 0, <= {RSS_LIMIT_MB} MB"
        out.append((target, got, ok and b["rows"] == a_run["rows"]))

    ratio = r10["wall"] / b10["wall"] if r10["all_ok"] and b10["all_ok"] else None
    # Where users run it, the backfill is paced by the client budget: it cannot take less than its
    # requests / CLIENT_BUDGET minutes, whatever the CPU does (the unpaced ratio is shown too).
    requests = b10["runs"][0]["requests"] if b10["all_ok"] else None
    paced_floor = requests / CLIENT_BUDGET * 60 if requests else None
    paced_ratio = r10["wall"] / paced_floor if r10["all_ok"] and paced_floor else None
    target = "10x `--resplit`: zero API calls, <= half the wall of its backfill (at the shipped 480/min budget)"
    got = f"exit {', '.join(str(r['exit']) for r in r10['runs'])} with CINNOX_BASE_URL on a closed port; "
    got += f"{fmt(r10['rows'], ',')} rows; {fmt(r10['wall'], '.2f')} s vs the backfill's "
    got += f"{fmt(paced_floor, ',.0f')} s at {CLIENT_BUDGET}/min ({fmt(requests, ',')} requests) = {fmt(paced_ratio, '.2f')}; "
    got += f"unpaced: vs b's {fmt(b10['wall'], '.2f')} s = {fmt(ratio, '.2f')}"
    ok = (paced_ratio or 9) <= 0.5 and r10["rows"] == records_of(wl.get("10x"))
    out.append((target, got, ok))
    return out


HEADER = """# Benchmark results

`.venv/bin/python benchmarks/run.py{flag}`, {finished_at}, {total_min:.1f} min.
Raw numbers: `benchmarks/.work/{json}`.

Machine: **{cores} cores** ({cpu}), {ram_gib} GiB RAM, {os}, Python {python}; dagster {dagster},
duckdb {duckdb}, pyarrow {pyarrow}, dlt {dlt}, requests {requests}.

## Targets

| target | measured | verdict |
|---|---|---|"""

METHOD = """## Method

* Simulator: `python -m campaign_pipeline.simulator`, one subprocess per workload, seed 7, `--now {now}`,
  days ending {last_day}, detail pages pre-rendered, summary listings requested once before the timed runs
  (not for `paced`, whose first and last requests must be b's).
* a: `benchmarks/bare_fetch.py` (one `requests.Session`, sequential, `response.json()`, stops after a short
  page). b: `campaign-pipeline backfill --start D1 --end Dn` into a fresh data dir, no `DAGSTER_HOME`,
  `CINNOX_RATE_LIMIT_PER_MIN=1000000` (paced: unset, so the default 480/min). c: `benchmarks/dlt_contender.py`
  (dlt `rest_api`, offset paginator `limit=500`, no totals, DuckDB; telemetry off, everything else default).
  r: `backfill --resplit` on the data dir b has just filled, with `CINNOX_BASE_URL` on a closed port.
* **Wall** = wall clock around the subprocess (start-up and imports included), median over the rounds.
  **Peak RSS** = the largest sum of RSS over the process and its children, polled every 50 ms, largest over
  the rounds. **records/s** = detail records of the workload (as fetched by a) / wall. **requests** = the
  simulator's request counter read before and after the run. **other load** = cores kept busy outside the
  benchmark during the run (others share this machine; above ~0.2 a run is disturbed).
* The contenders take turns within each round; 1x and 10x run {repeat} round(s), the other workloads one.
  c runs on 1x only (on 10x it would take about 13 min and over 3 GB a run)."""

TABLE_HEAD = (
    "| contender | wall s (median) | each round | records/s | peak RSS MB | requests | 429s | rows loaded "
    "| exit | other load |\n|---|---:|---|---:|---:|---:|---:|---:|---|---:|"
)


def render(results: dict) -> str:
    """RESULTS.md: targets, method, a table per workload."""
    flag = " --quick" if results["quick"] else ""
    lines = [HEADER.format(flag=flag, **results, **results["environment"])]
    plan = {w.name: w for w in workloads(results["quick"])}
    verdicts = targets(results["workloads"], plan)
    lines += [f"| {t} | {m} | **{'met' if ok else 'not met'}** |" for t, m, ok in verdicts]
    lines += ["", METHOD.format(now=NOW, last_day=LAST_DAY, repeat=results["repeat"])]
    for name, entry in sorted(results["workloads"].items(), key=lambda item: list(plan).index(item[0])):
        records = records_of(entry)
        lines += ["", f"## {name}: {entry['describe']}", ""]
        about = f"{fmt(records, ',')} detail records; measured {entry['measured_at']} on {entry['commit']}"
        lines += [f"{about}; simulator start-up {entry.get('simulator_startup_s', 'n/a')} s (not timed).", ""]
        lines += [f"**Failed:** {entry['error']}", ""] if "error" in entry else []
        lines += [TABLE_HEAD]
        for c in "abcr":
            x = summary(entry, c)
            if x["runs"]:
                speed = records / x["wall"] if records and x["wall"] else None
                cells = [LABELS[c], fmt(x["wall"], ".2f"), ", ".join(f"{r['wall_s']:.2f}" for r in x["runs"])]
                cells += [fmt(speed, ",.0f"), f"{x['rss']:.0f}", f"{x['runs'][-1]['requests']:,}"]
                cells += [str(sum(r["throttled"] for r in x["runs"])), fmt(x["rows"], ",")]
                cells += [", ".join(str(r["exit"]) for r in x["runs"])]
                cells += [f"{max(r['other_load'] for r in x['runs']):.2f}"]
                lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Measure, then write the report and the raw numbers (after each workload)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 round, .work/RESULTS-quick.md")
    parser.add_argument("--repeat", type=int, default=3, help="rounds on 1x and 10x (default 3)")
    parser.add_argument(
        "--only",
        default="",
        help="e.g. 1x,paced or b,c: some workloads (1x, 10x, many-small, "
        "one-huge, paced) and/or contenders (a, b, c, r), merged into the last results",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="max s to wait for an idle machine before each run (default 60, --quick 0)",
    )
    args = parser.parse_args(argv)
    only, plan = {x.strip() for x in args.only.split(",") if x.strip()}, workloads(args.quick)
    names = {w.name for w in plan}
    if only - set(LABELS) - names:
        parser.error(f"unknown in --only: {', '.join(sorted(only - set(LABELS) - names))}")
    repeat = 1 if args.quick else args.repeat
    quiet_s = args.quiet_wait if args.quiet_wait is not None else (0 if args.quick else 60)
    json_name = "results-quick.json" if args.quick else "results.json"
    json_path, md_path = WORK / json_name, WORK / "RESULTS-quick.md" if args.quick else BENCH / "RESULTS.md"
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    results = json.loads(json_path.read_text()) if only and json_path.exists() else {"workloads": {}}
    results.update(quick=args.quick, repeat=repeat, json=json_name, environment=environment())
    started = time.perf_counter()
    for w in [w for w in plan if not only & names or w.name in only]:
        entry = measure_workload(w, only, repeat, quiet_s)
        measured = {r["contender"] for r in entry["runs"]}  # --only: the other contenders' runs stay
        old = results["workloads"].get(w.name, {"runs": []})["runs"]
        entry["runs"][:0] = [r for r in old if r["contender"] not in measured]
        results["workloads"][w.name] = entry
        results.update(finished_at=f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
        results["total_min"] = (time.perf_counter() - started) / 60
        json_path.write_text(json.dumps(results, indent=1))
        md_path.write_text(render(results))
    log(f"wrote {md_path.relative_to(ROOT)} and {json_path.relative_to(ROOT)}")
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
