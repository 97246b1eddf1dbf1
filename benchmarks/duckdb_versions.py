"""DuckDB 1.5.5 vs 2.0.1 on the warehouse's hot path, side by side (docs/deployment.md, "Which DuckDB").

Needs one virtual environment per DuckDB version, each with duckdb and pyarrow only::

    python3.11 -m venv /tmp/d15 && /tmp/d15/bin/pip install duckdb==1.5.5 pyarrow
    python3.11 -m venv /tmp/d20 && /tmp/d20/bin/pip install duckdb==2.0.1 pyarrow
    python benchmarks/duckdb_versions.py --compare /tmp/d15/bin/python /tmp/d20/bin/python --repeat 3

Each child process (only duckdb and pyarrow needed, no project import) writes a message-table-like
Parquet day of ``--rows`` rows, loads it into a fresh DuckDB file with the writer's settings
(memory_limit 64 MB, ``INSERT ... SELECT FROM read_parquet``, one transaction), runs a daily
delivery-rate aggregation, and reports seconds and its peak RSS. The parent (``--compare A B``)
runs the two interpreters alternately ``--repeat`` times and writes a markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = 1_000_000


def child(out: Path, rows: int) -> None:
    import duckdb
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        index = pa.array(range(rows), pa.int64())
        statuses = pa.array(["Delivered", "Read", "Failed", "Pending", "Undelivered"])
        table = pa.table({
            "partition_date": pa.array([19_000] * rows, pa.int32()).cast(pa.date32()),
            "app_id": pa.array(["app"] * rows),
            "campaign_id": pc.cast(pc.divide(index, 1000), pa.string()),
            "recipient": pc.cast(pc.add(index, 85_200_000_000), pa.string()),
            "status": pc.take(statuses, pc.cast(pc.bit_wise_and(index, 3), pa.int32())),
            "sent_at": pc.cast(pc.multiply(index, 1000), pa.timestamp("us", tz="UTC")),
            "num_sms": pc.cast(pc.bit_wise_and(index, 1), pa.int32()),
            "content": pc.binary_join_element_wise(pa.array(["hello message number "] * rows),
                                                   pc.cast(index, pa.string()), ""),
        })
        parquet = Path(tmp) / "day.parquet"
        pq.write_table(table, parquet, compression="zstd", row_group_size=122_880)
        del table
        database = Path(tmp) / "w.duckdb"
        con = duckdb.connect(str(database), config={"memory_limit": "64MB", "autoinstall_known_extensions": False,
                                                    "autoload_known_extensions": False})
        con.execute("CREATE TABLE m (partition_date DATE, app_id VARCHAR, campaign_id VARCHAR, recipient VARCHAR, "
                    "status VARCHAR, sent_at TIMESTAMPTZ, num_sms INTEGER, content VARCHAR)")
        started = time.perf_counter()
        con.execute("BEGIN TRANSACTION")
        con.execute("DELETE FROM m WHERE partition_date = DATE '2022-01-08' AND app_id = 'app'")
        con.execute("INSERT INTO m SELECT * FROM read_parquet(?)", [str(parquet)])
        con.execute("COMMIT")
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        con.execute("SELECT partition_date, count(*) AS messages, count(*) FILTER (status IN ('Delivered', 'Read')) "
                    "/ count(*) AS rate FROM m GROUP BY ALL").fetchall()
        query_s = time.perf_counter() - started
        con.close()
        size_mb = database.stat().st_size / 2**20
    out.write_text(json.dumps({"duckdb": duckdb.__version__, "load_s": load_s, "query_s": query_s,
                               "file_mb": size_mb, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                               / 1024}))


def compare(pythons: list[str], repeat: int, rows: int, output: Path) -> None:
    results: dict[str, list[dict]] = {p: [] for p in pythons}
    with tempfile.TemporaryDirectory() as tmp:
        for round_number in range(repeat):
            for python in pythons:  # alternate, so drift in machine load hits both
                out = Path(tmp) / f"{round_number}-{len(results[python])}.json"
                subprocess.run([python, __file__, "--child", str(out), "--rows", str(rows)], check=True)
                results[python].append(json.loads(out.read_text()))
    lines = [f"# DuckDB versions on the warehouse's load path ({rows:,} rows, {repeat} alternating runs, medians)",
             "", f"Command: `python benchmarks/duckdb_versions.py --compare {' '.join(pythons)} --repeat {repeat}`",
             "", "| DuckDB | load day (s) | daily rate query (s) | file (MB) | peak RSS (MB) |", "|---|---|---|---|---|"]
    medians = {}
    for python, runs in results.items():
        row = {k: statistics.median(r[k] for r in runs) for k in ("load_s", "query_s", "file_mb", "peak_rss_mb")}
        medians[runs[0]["duckdb"]] = row
        lines.append(f"| {runs[0]['duckdb']} | {row['load_s']:.2f} | {row['query_s']:.3f} | {row['file_mb']:.1f} | "
                     f"{row['peak_rss_mb']:.0f} |")
    if len(medians) == 2:
        (a, ra), (b, rb) = medians.items()
        ratios = (f"Ratios {a} / {b}: load {ra['load_s'] / rb['load_s']:.2f}x, query "
                  f"{ra['query_s'] / rb['query_s']:.2f}x, peak RSS {ra['peak_rss_mb'] / rb['peak_rss_mb']:.2f}x.")
        lines += ["", ratios]
    output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", type=Path)
    parser.add_argument("--compare", nargs="+", metavar="PYTHON")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "DUCKDB_VERSIONS.md")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rows)
    elif args.compare:
        compare(args.compare, args.repeat, args.rows, args.output)
    else:
        parser.error("--child OUT or --compare PYTHON PYTHON")


if __name__ == "__main__":
    sys.exit(main())
