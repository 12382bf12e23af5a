"""Benchmark: CPU time (not wall time) per message of the MIME, DKIM and outbox calls.

    python -m benchmarks.stage_cpu [--subscribers 4000] [--sample 1500]

`benchmarks.pipeline`'s per-stage breakdown times the stages with a wall clock, which on a
shared machine moves by a third from run to run. This makes the same calls on the same
synthetic data (`benchmarks.pipeline.prepare`), renders the digests first, and then times
with `time.process_time` only: `send.header_fields`, `mime.assemble` (headers included),
`FastSigner.sign_parts` and `benchmarks.pipeline._outbox_writes` (enqueue, claim, record
sent). As in `benchmarks.pipeline.stages`, `--sample` other messages go through every stage
untimed first, so the per-process caches are as warm as for most of a long run; the timed
messages are each built once (built again, their QP lines would all be cached). Not a test:
the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks import pipeline
from benchmarks.match import NOW
from digest import batch, executor, store
from digest.mime import assemble
from digest.models import Digest, RenderedEmail, Subscriber
from digest.render import Links, environment, render
from digest.send import header_fields, load_signer
from digest.subscribers import load as load_subscribers


def renders(config: Path, count: int) -> list[tuple[Digest, RenderedEmail]]:
    """The first `count` subscribers' digests, rendered."""
    settings = pipeline.fresh(config, "renders")
    db = store.open_db(settings.store.path)
    subs = [e for e in load_subscribers(settings.subscribers.dir, settings.defaults, db)
            if isinstance(e, Subscriber)]
    run = batch.MatchRun(db, subs, NOW)
    env = environment()
    out = []
    for sub in subs[:count]:
        digest = run.digest(sub, NOW.date())
        if digest is not None:
            out.append((digest, render(digest, Links(unsubscribe="mailto:d@example.org"), env)))
    db.close()
    return out


def one_pass(config: Path, built: list[tuple[Digest, RenderedEmail]]) -> dict[str, float]:
    """CPU seconds a message of each stage, over `built`, on a fresh store."""
    settings = pipeline.fresh(config, "stage_cpu")
    signer = load_signer(settings.dkim)
    assert signer is not None
    worker = store.open_db(settings.store.path)
    worker.execute("PRAGMA synchronous = NORMAL")  # as a `send --workers` worker writes
    parent = store.open_db(settings.store.path)
    times = dict.fromkeys(("headers", "MIME", "DKIM", "outbox"), 0.0)
    pending: list[tuple[Digest, str, str, bytes]] = []
    for i, (digest, rendered) in enumerate(built):
        t0 = time.process_time()
        fields = header_fields(rendered, digest, settings.delivery, NOW)
        t1 = time.process_time()
        parts = assemble(fields, rendered.text, rendered.html)
        t2 = time.process_time()
        data = signer.sign_parts(parts.head, parts.body, parts.relaxed_stable) + parts.head \
            + b"\r\n" + parts.body
        t3 = time.process_time()
        times["headers"] += t1 - t0
        times["MIME"] += t2 - t0
        times["DKIM"] += t3 - t2
        pending.append((digest, rendered.subject, parts.message_id, data))
        if len(pending) == executor.CHUNK or i == len(built) - 1:
            t4 = time.process_time()
            pipeline._outbox_writes(worker, parent, settings, pending)
            times["outbox"] += time.process_time() - t4
            pending.clear()
    worker.close()
    parent.close()
    return {name: seconds / max(len(built), 1) for name, seconds in times.items()}


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stage_cpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=4000)
    parser.add_argument("--listings", type=int, default=1000)
    parser.add_argument("--sample", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        config = pipeline.prepare(Path(tmp), args.subscribers, args.listings, args.seed, 25)
        built = renders(config, 2 * args.sample)
        one_pass(config, built[args.sample:])  # warms the caches, untimed
        per = one_pass(config, built[:args.sample])
        print(f"{len(built[:args.sample]):,} messages; ms of CPU a message (MIME includes"
              " headers): " + "  ".join(f"{name} {seconds * 1000:.3f}"
                                        for name, seconds in per.items()))


if __name__ == "__main__":
    main()
