"""What a person reads after a protocol run: the results tables and the trade-off plot."""
from ..evaluation.plots import new_figure, save_figure
from ..privatizers.methods import BASELINE_METHODS, METHODS
from .verdicts import ATTACKERS, family_points, matched_leakage_verdict, table_columns

METHOD_COLOURS = {"original": "tab:grey", **{name: method.colour for name, method in METHODS.items()}}


def markdown_table(summary):
    """A Markdown table, ``mean ± std`` where a row has more than one seed."""
    columns = table_columns(summary)
    lines = ["| variant | seeds | " + " | ".join(h for _, h, _ in columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]
    for entry in summary:
        cells = []
        for key, _, fmt in columns:
            mean, std = entry[key]
            if mean is None:
                cells.append("–")
                continue
            cell = fmt.format(100 * mean)
            cells.append(cell + (" ± " + fmt.format(100 * std) if len(entry["seeds"]) > 1 else ""))
        lines.append(f"| {entry['variant']} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_tradeoff(summary, path, title="Utility vs privacy leakage", attackers=ATTACKERS):
    """Verification accuracy against rank-1 instance leakage, one labelled point per variant.

    One panel per attacker whose leakage the summary holds (the informed attacker is the sharper
    judge where identity lives in fine detail, and can order the methods differently).
    """
    panels = tradeoff_panels(summary, attackers)
    figure = new_figure(7.5 * len(panels), 5.5)
    first = None
    for n, (leak_key, attacker) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), n + 1, sharey=first)
        first = first or axes
        _draw_family_curves(axes, summary, leak_key)
        _draw_variants(axes, summary, leak_key)
        axes.set_xlabel(f"rank-1 instance leakage %, {attacker} attacker\n"
                        "(released image retrieves its source; lower is better)")
        axes.set_title(title if len(panels) == 1 else f"{title}: {attacker} attacker")
        axes.grid(alpha=0.3)
    first.set_ylabel("verification accuracy % on held-out identities")
    figure.tight_layout()
    return save_figure(figure, path)


def tradeoff_panels(summary, attackers=ATTACKERS):
    """The ``(leak_key, attacker)`` pairs the trade-off plot draws: those with a value in some row."""
    panels = [(key, name) for key, name in attackers if any(e[key][0] is not None for e in summary)]
    return panels or list(attackers[:1])


def _draw_variants(axes, summary, leak_key):
    """A labelled point per variant, with error bars where it has several seeds."""
    for entry in summary:
        (x, x_std), (y, y_std) = entry[leak_key], entry["accuracy"]
        if x is None:
            continue
        colour = METHOD_COLOURS.get(entry["method"], "tab:brown")
        axes.errorbar(100 * x, 100 * y, xerr=100 * x_std, yerr=100 * y_std, fmt="o", color=colour, capsize=3)
        axes.annotate(entry["variant"], (100 * x, 100 * y), textcoords="offset points", xytext=(5, 4), fontsize=8)


def _draw_family_curves(axes, summary, leak_key):
    """One dashed line per baseline method through its strengths, from the originals (strength 0)."""
    for method in BASELINE_METHODS:
        points = sorted((100 * leak, 100 * (1 - error))  # accuracy is 1 - error, also as a mean over seeds
                        for leak, error, _ in family_points(summary, method, leak_key))
        if len(points) < 2:
            continue
        axes.plot(*zip(*points), linestyle="--", linewidth=0.8, color=METHOD_COLOURS[method], alpha=0.6,
                  label=method)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(title="baseline strengths", fontsize=8, loc="best")


def matched_ratio_table(summary, leak_keys=ATTACKERS, baselines=BASELINE_METHODS):
    """Markdown: every FaceMAE row's error over each baseline's at its own leakage, per attacker.

    A cell is the matched verdict's ratio (the claim wants <= 0.50); "–" where that method has no row
    leaking as little. Methods without rows get no column. Lets a ratio sweep or a longer-trained
    model be read against the same curves.
    """
    baselines = [m for m in baselines if any(e["method"] == m for e in summary)]
    lines = ["| FaceMAE row | attacker | leakage % | error % | " + " | ".join(f"vs {m}" for m in baselines) + " |",
             "|---|---|---:|---:|" + "---:|" * len(baselines)]
    for entry in summary:
        if entry["method"] != "facemae":
            continue
        for key, attacker in leak_keys:
            verdict = matched_leakage_verdict(summary, facemae=entry["variant"], baselines=baselines, leak_key=key)
            if "leakage" not in verdict:
                continue
            cells = [_ratio_cell(verdict["families"].get(method)) for method in baselines]
            lines.append(f"| {entry['variant']} | {attacker} | {100 * verdict['leakage']:.1f} | "
                         f"{100 * verdict['error']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio_cell(match):
    return "–" if match is None else f"{match['ratio']:.2f}"
