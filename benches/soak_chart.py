#!/usr/bin/env python3
"""Draws the soak's samples (benches/soak.rs): `python3 benches/soak_chart.py target/soak.csv docs/soak.png`.

Needs matplotlib (`pip install matplotlib`)."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

source, target = sys.argv[1], sys.argv[2]
with open(source) as f:
    rows = list(csv.DictReader(f))
minutes = [float(r["seconds"]) / 60 for r in rows]
series = [
    ("rss_mb", "resident memory (MB)"),
    ("fds", "open file descriptors"),
    ("db_connections", "database connections"),
    ("lag_messages", "lag (messages)"),
]
fig, axes = plt.subplots(len(series), 1, figsize=(7, 6), sharex=True)
for ax, (key, label) in zip(axes, series):
    values = [float(r[key]) for r in rows]
    ax.plot(minutes, values, linewidth=1)
    ax.set_ylabel(label, fontsize=8)
    ax.set_ylim(bottom=0, top=max(values) * 1.25 + 1)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
axes[-1].set_xlabel("minutes", fontsize=8)
fig.suptitle("cdc-audit soak: one instance at half the drain rate", fontsize=10)
fig.tight_layout()
fig.savefig(target, dpi=80)
