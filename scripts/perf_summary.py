#!/usr/bin/env python3
"""Summarises `perf script` output of a pushgate run: where the CPU goes, per thread.

scripts/profile records pushgate with `perf record --call-graph dwarf` while pushgate-bench
loads it, then runs this on `perf script`'s text. It prints, for the whole process and for each
thread group (the stream loop on the main thread, tokio's workers, sqlx's SQLite workers, the
SQLite lookup thread), the share of samples whose stack contains each of a few named parts of
pushgate (inclusive time), and the functions with the most samples of their own (self time).
docs/performance.md quotes its output.

    perf script -i perf.data | python3 scripts/perf_summary.py
"""

from __future__ import annotations

import collections
import re
import sys

# Inclusive-time buckets: a sample counts for every bucket one of its frames matches.
PARTS = [
    ("XML in: tokio-xmpp/rxml/xso/minidom parse", r"^(rxml|xso|minidom)::|RawXmlStream|FromXmlBuilder|FromEventsBuilder"),
    ("XML out: replies serialised and flushed", r"start_send_xso|AsXmlIterator|poll_flush<tokio_xmpp"),
    ("spawning a task per stanza", r"^tokio::task::spawn::spawn"),
    ("router + publish handling (ours)", r"^pushgate::(router|publish)::"),
    ("ad-hoc command handling (ours)", r"^pushgate::commands::"),
    ("publish read from its bytes, no tree (ours)", r"^pushgate::fronts::xmpp::(xml|publish::iq)::"),
    ("publish request parsing (ours)", r"PublishRequest as core::convert::TryFrom|PublishRequest>::read"),
    ("registration lookup (storage)", r"pushgate::storage::Store::find_by_node"),
    ("database (sea-orm/sqlx/SQLite)", r"^(sea_orm|sqlx_core|sqlx_sqlite|sqlx_postgres)::|sqlite3|^pushgate::storage::sqlite_reader::"),
    ("Matrix notify handling (ours)", r"^pushgate::fronts::matrix::"),
    ("  notify body parse (serde_json)", r"^pushgate::fronts::matrix::notify::parse"),
    ("UnifiedPush push handling (ours)", r"^pushgate::fronts::(xmpp|http)::unifiedpush::"),
    ("  endpoint lookup (storage)", r"pushgate::storage::Store::up_endpoint"),
    ("  VAPID check", r"^pushgate::fronts::xmpp::unifiedpush::vapid::"),
    ("  waiting for the distributor's answer (pending IQs)", r"^pushgate::fronts::xmpp::pending::"),
    ("HTTP/1.1 server: parse, encode, buffers (hyper h1)", r"^hyper::proto::h1::(role|io|decode|encode)::"),
    ("core delivery (incl. the provider send)", r"^pushgate::core::delivery::"),
    ("provider send, all of it", r"as pushgate_providers::Provider>::send"),
    # Also every hyper server frame: a connection task encloses its handlers (Matrix, UnifiedPush).
    ("  HTTP client (reqwest/hyper/h2)", r"^(reqwest|hyper|hyper_util|h2)::|<(reqwest|hyper|h2)::"),
    ("  TLS (rustls)", r"^(rustls|tokio_rustls)::|<(rustls|tokio_rustls)::"),
    ("  JSON (serde_json)", r"^serde_json::"),
    ("  URL parsing", r"^url::"),
    ("malloc/free", r"^(__GI___libc_malloc|__GI___libc_free|_int_malloc|_int_free|malloc|cfree|realloc|__libc_calloc)"),
    ("metrics (prometheus)", r"^prometheus::"),
    ("logging/tracing", r"^tracing_subscriber::|^tracing_core::"),
]


def read_stacks(lines):
    """Yields (thread name, [frames innermost first]) from `perf script` text."""
    thread, frames = None, []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if frames:
                yield thread, frames
            thread, frames = None, []
        elif line[0] in " \t":
            parts = line.strip().split(" ", 1)
            if len(parts) == 2:
                frames.append(re.sub(r"\+0x[0-9a-f]+.*$", "", parts[1]).strip())
        else:
            thread = line.split()[0]
    if frames:
        yield thread, frames


def group(thread: str) -> str:
    if thread.startswith("tokio-rt"):
        return "tokio workers"
    if thread.startswith("sqlx"):
        return "sqlx SQLite workers"
    if thread.startswith("pushgate-lookup"):
        return "lookup thread (SQLite)"
    return "main thread (stream loop)"


def summarise(title: str, stacks: list[list[str]], total: int) -> None:
    n = len(stacks)
    if n == 0:
        return
    print(f"\n== {title}: {n} samples ({100 * n / total:.0f}% of all)")
    compiled = [(name, re.compile(p)) for name, p in PARTS]
    counts = collections.Counter()
    own = collections.Counter()
    for frames in stacks:
        for name, rx in compiled:
            if any(rx.search(f) for f in frames):
                counts[name] += 1
        own[frames[0][:100]] += 1
    print("  inclusive (share of this group's samples):")
    for name, _ in compiled:
        if counts[name]:
            print(f"    {100 * counts[name] / n:5.1f}%  {name}")
    print("  self time, top 8:")
    for fn, c in own.most_common(8):
        print(f"    {100 * c / n:5.1f}%  {fn}")


def main() -> None:
    by_group = collections.defaultdict(list)
    everything = []
    for thread, frames in read_stacks(sys.stdin):
        everything.append(frames)
        by_group[group(thread or "")].append(frames)
    total = len(everything)
    if total == 0:
        sys.exit("no samples in the input")
    summarise("whole process", everything, total)
    for name in sorted(by_group):
        summarise(name, by_group[name], total)


if __name__ == "__main__":
    main()
