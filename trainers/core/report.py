"""The analysis report's figures and its self-contained HTML page.

Everything the page shows is drawn here from arrays (matplotlib, Agg backend) and inlined
as base64 PNG, so `index.html` opens offline, from a mail attachment or an artefact store,
with nothing beside it. Tables carry the numbers of `metrics.json` as text, so a reader (or
a test) finds them in the page.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from trainers.core import metrics as metrics_lib


def _figure(width=5.0, height=4.0, ncols=1, width_ratios=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height), dpi=100,
                        width_ratios=width_ratios)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def reliability(title: str, curves: dict) -> bytes:
    """Reliability diagram: curves = {name: (correct, confidence)}; marker area ~ bin size."""
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="calibrated")
    for name, (correct, confidence) in curves.items():
        count, mean_p, rate = metrics_lib.calibration_bins(correct, confidence)
        full = count > 0
        ece = metrics_lib.ece(correct, confidence)
        ax.plot(mean_p[full], rate[full], marker="o", lw=1.5,
                label=f"{name} (ECE {ece:.4f})")
        ax.scatter(mean_p[full], rate[full], s=200 * count[full] / count.sum(), alpha=0.3)
    top = max(0.05, max(float(np.nanmax(c[1])) for c in curves.values()))
    ax.set_xlim(0, min(1.0, top * 1.05))
    ax.set_ylim(0, min(1.0, top * 1.05))
    ax.set_xlabel("predicted probability (bin mean)")
    ax.set_ylabel("observed rate")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _png(fig)


def roc_pr(task: str, labels, curves: dict) -> bytes:
    """ROC and precision-recall curves of `task`: curves = {name: scores}."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    fig, (roc, pr) = _figure(9.0, 4.0, ncols=2)
    y = np.asarray(labels) > 0
    for name, scores in curves.items():
        fpr, tpr, _ = roc_curve(y, scores)
        roc.plot(fpr, tpr, label=f"{name} (AUC {metrics_lib.auc(y, scores):.4f})")
        precision, recall, _ = precision_recall_curve(y, scores)
        pr.plot(recall, precision, label=f"{name} (AP {metrics_lib.pr_auc(y, scores):.4f})")
    roc.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
    roc.set_xlabel("false positive rate")
    roc.set_ylabel("true positive rate")
    roc.set_title(f"{task}: ROC")
    roc.legend(fontsize=8)
    pr.axhline(y.mean(), color="grey", lw=1, ls="--", label=f"base rate {y.mean():.3f}")
    pr.set_xlabel("recall")
    pr.set_ylabel("precision")
    pr.set_title(f"{task}: precision-recall")
    pr.legend(fontsize=8)
    return _png(fig)


def price_range_names(edges, k: int) -> list[str]:
    """"lo-hi" per price range from the K - 1 inner edges; the index where they do not fit."""
    if edges is None or len(edges) != k - 1:
        return [str(i) for i in range(k)]
    bounds = ["0"] + [f"{e:g}" for e in edges] + ["+"]
    return [f"{bounds[i]}-{bounds[i + 1]}" for i in range(k)]


def confusion(matrix, edges=None) -> bytes:
    """The price-range confusion matrix, each row normalised (true range -> predicted)."""
    m = np.asarray(matrix, np.float64)
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = _figure(5.0, 4.2)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    k = len(m)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{share[i, j]:.2f}\n({int(m[i, j])})", ha="center", va="center",
                    fontsize=7, color="white" if share[i, j] > 0.5 else "black")
    names = price_range_names(edges, k)
    ax.set_xticks(range(k), names, rotation=30, fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted price range")
    ax.set_ylabel("price range of the next purchase")
    ax.set_title("price range: confusion (row share)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _png(fig)


def outlook(rows: list[dict], summary: dict, top: int = 15) -> bytes:
    """Each forecast against what sold (the items the demand head has a forecast for:
    the same rows for all three), and the hot sellers."""
    fig, (ax, bar) = _figure(11.0, 4.4, ncols=2, width_ratios=[1, 1.2])
    model = [r for r in rows if r["recent_impressions"] > 0]
    a = np.array([r["actual_units"] for r in model])
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(a))
    hi = max(1.0, float(np.max(a, initial=1)))
    for column, name, key, marker in (
            ("item_level_forecast", "item level", "item_level", "o"),
            ("demand_head_forecast", "demand head", "model", "^"),
            ("trailing_forecast", "trailing 7 days", "trailing", "x")):
        f = np.array([r[column] for r in model])
        ax.scatter(f, a + jitter, s=6, alpha=0.35, marker=marker,
                   label=f"{name} (WAPE {summary[key]['wape']:.3f})")
        hi = max(hi, float(np.max(f, initial=1)))
    ax.plot([0, hi], [0, hi], color="grey", lw=1, ls="--")
    ax.set_xlabel(f"forecast units, next {summary['horizon_days']:g} days")
    ax.set_ylabel("units sold")
    ax.set_title("item outlook on the eval days")
    ax.legend(fontsize=8)
    head = rows[:top][::-1]
    y = np.arange(len(head))
    bar.barh(y, [r["forecast"] for r in head], color="tab:orange", alpha=0.8, label="forecast")
    bar.errorbar([r["forecast"] for r in head], y,
                 xerr=[[r["forecast"] - r["low"] for r in head],
                       [r["high"] - r["forecast"] for r in head]],
                 fmt="none", ecolor="black", lw=0.8, label="90 % interval")
    bar.scatter([r["actual_units"] for r in head], y, color="tab:blue", zorder=3, s=14,
                label="sold")
    bar.set_yticks(y, [f"{r['item_id']} ({r['category']})" for r in head], fontsize=7)
    bar.set_title(f"hot sellers: top {len(head)} by forecast")
    bar.legend(fontsize=7, loc="lower right")
    return _png(fig)


# ---------------------------------------------------------------------------------------
def img(png: bytes, alt: str) -> str:
    return (f'<img alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode()}">')


def table(header: list, rows: list[list], numbers: str = "{:.4f}") -> str:
    def cell(v):
        if isinstance(v, float):
            return "<td class=num>" + ("–" if not np.isfinite(v) else numbers.format(v)) + "</td>"
        if isinstance(v, int):
            return f"<td class=num>{v:,}</td>"
        return f"<td>{html.escape(str(v))}</td>"

    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.2em .5em}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;margin:.3em 0}.note{color:#555;font-size:.9em}
"""


def page(title: str, sections: list[tuple[str, str]], intro: str = "") -> str:
    body = "".join(f"<h2 id=\"{html.escape(h.lower().replace(' ', '-'))}\">{html.escape(h)}</h2>{c}"
                   for h, c in sections)
    toc = " · ".join(f"<a href=\"#{html.escape(h.lower().replace(' ', '-'))}\">{html.escape(h)}</a>"
                     for h, _ in sections)
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}"
            f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class=note>{intro}</p><p>{toc}</p>{body}</body></html>")


def segments_chart(representation: np.ndarray, labels: np.ndarray, rows: list[dict]) -> bytes:
    """Segment sizes, and the users in the first two principal components of the encoder's
    representation, coloured by segment."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    fig, (bar, scatter) = _figure(10.0, 4.0, ncols=2, width_ratios=[1, 1.4])
    bar.bar([str(r["segment"]) for r in rows], [r["users"] for r in rows],
            color=[f"C{r['segment'] % 10}" for r in rows])
    bar.set_xlabel("segment")
    bar.set_ylabel("users")
    bar.set_title("segment sizes")
    x = StandardScaler().fit_transform(representation)
    xy = PCA(n_components=2, random_state=0).fit_transform(x) if len(x) > 2 else np.zeros((len(x), 2))
    for s in range(int(labels.max()) + 1 if len(labels) else 0):
        m = labels == s
        scatter.scatter(xy[m, 0], xy[m, 1], s=6, alpha=0.6, color=f"C{s % 10}", label=str(s))
    scatter.set_title("users by the encoder (PCA of the representation)")
    scatter.set_xlabel("PC 1")
    scatter.set_ylabel("PC 2")
    scatter.legend(title="segment", fontsize=7, markerscale=2)
    return _png(fig)


def user_chart(events: list[dict], history_shares: str, model_shares: str,
               price_probs: list[float], price_names: list[str]) -> bytes:
    """A user's recent events over time, their category shares (log vs model) and the
    model's price-range distribution."""
    fig, (tl, cat, price) = _figure(12.0, 3.6, ncols=3, width_ratios=[1.4, 1, 0.8])
    kinds = ["search", "click", "cart", "purchase"]
    if events:
        t0 = max(e["timestamp"] for e in events)
        days = [(e["timestamp"] - t0) / 86400 for e in events]
        y = [kinds.index(e["event"]) if e["event"] in kinds else -1 for e in events]
        tl.scatter(days, y, s=14, c=[f"C{y_ % 10}" for y_ in y])
    tl.set_yticks(range(len(kinds)), kinds)
    tl.set_xlabel("days before the last event")
    tl.set_title("recent behaviour")

    def parse(shares):
        return dict((p.split(":")[0], float(p.split(":")[1]))
                    for p in shares.split(";") if p) if shares else {}

    h, m = parse(history_shares), parse(model_shares)
    names = list(dict.fromkeys(list(h) + list(m)))
    yy = np.arange(len(names))
    cat.barh(yy - 0.2, [h.get(n, 0) for n in names], height=0.4, label="log (share)")
    cat.barh(yy + 0.2, [m.get(n, 0) for n in names], height=0.4, label="model (share of p(click))")
    cat.set_yticks(yy, names, fontsize=8)
    cat.invert_yaxis()
    cat.legend(fontsize=7)
    cat.set_title("top categories")
    price.bar(range(len(price_probs)), price_probs, color="tab:green")
    price.set_xticks(range(len(price_probs)), price_names, rotation=30, fontsize=7)
    price.set_title("price range (model)")
    return _png(fig)
