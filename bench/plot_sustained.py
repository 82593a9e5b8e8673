"""Plots `longrun bench sustained --output json` as a PNG: create-to-start
p50 and p99 per window, and the server's RSS and data-directory size.

    python bench/plot_sustained.py sustained.json docs/sustained.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(source: str, target: str) -> None:
    run = json.load(open(source))
    windows = run["windows"]
    minutes = [w["seconds"] / 60 for w in windows]
    fig, (latency, memory) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for key, label in (("add_to_start_p50_ms", "p50"), ("add_to_start_p99_ms", "p99")):
        latency.plot(minutes, [w[key] for w in windows], label=label)
    latency.axhline(50, color="grey", linestyle="--", linewidth=0.8, label="50 ms")
    latency.set_ylabel("create to start, ms")
    latency.set_yscale("log")
    latency.legend(loc="upper right")
    seconds = run["seconds"]
    span = f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"
    latency.set_title(
        f"longrun, {run['rate']:.0f} creates/s for {span} "
        f"(sled, --sync always, retention {run['retention_seconds']:.0f} s)"
    )
    mib = 1 << 20
    rss = [w["rss_bytes"] / mib if w["rss_bytes"] else None for w in windows]
    disk = [w["disk_bytes"] / mib if w["disk_bytes"] else None for w in windows]
    memory.plot(minutes, rss, label="server RSS")
    memory.plot(minutes, disk, label="data directory")
    memory.set_ylabel("MiB")
    memory.set_xlabel("minutes")
    memory.set_ylim(bottom=0)
    memory.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    print(
        f"{target}: create to start p50 {run['add_to_start_p50_ms']} ms, "
        f"p99 {run['add_to_start_p99_ms']} ms over {run['created']} creates"
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
