"""The HTML view of ``python -m eval.diff``: one self-contained page (inline CSS; each item's
images as inline JPEG thumbnails, nothing fetched), every string escaped."""

from __future__ import annotations

import base64
import io
from html import escape

THUMBNAIL = 320  # px, the longer side

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; }
th { background: #f4f4f4; }
td.reply { white-space: pre-wrap; max-width: 32em; }
td.worse { background: #ffebe9; } td.better { background: #dafbe1; }
img { max-width: 320px; display: block; margin-bottom: 4px; }
"""


def thumbnail(ref: str) -> str:
    """An ``<img>`` with the image inline, or a note saying why it cannot be shown."""
    try:
        from data.media.images import load_image  # files, data URIs, hfrow:// dataset cells

        image = load_image(ref)
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
    except Exception as e:  # noqa: BLE001 - the page is still useful without this image
        return f'<div class="missing">(image {escape(str(ref))} not shown: {escape(str(e))})</div>'
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="{escape(str(ref))}" src="data:image/jpeg;base64,{data}">'


def render(result: dict[str, dict], name_a: str, name_b: str) -> str:
    sections = []
    for task, c in result.items():
        if not c["n"]:
            sections.append(f"<h2>{escape(task)}</h2><p>No items in common.</p>")
            continue
        rows = []
        for f in c["flips"]:
            a, b = f["a"], f["b"]
            worse = b["score"] < a["score"]
            images = "".join(thumbnail(ref) for ref in a.get("images") or b.get("images") or [])
            prompt = a.get("prompt", b.get("prompt", "(prompt not recorded)"))
            rows.append(
                f'<tr data-id="{escape(f["id"])}"><td>{escape(f["id"])}</td>'
                f'<td>{images}<div class="prompt">{escape(prompt)}</div></td>'
                f'<td>{escape(str(a.get("answer", "")))}</td>'
                f'<td class="reply">{escape(a["prediction"])}</td><td>{a["score"]:.2f}</td>'
                f'<td class="reply {"worse" if worse else "better"}">{escape(b["prediction"])}</td>'
                f'<td>{b["score"]:.2f}</td></tr>')
        summary = (f"{c['n']} items in common: {100 * c['score_a']:.1f} vs {100 * c['score_b']:.1f}, "
                   f"{c['worse']} worse and {c['better']} better in {name_b}; paired test "
                   f"p = {c['p']:.3g}.")
        table = (f'<table><thead><tr><th>id</th><th>prompt</th><th>answer</th><th>{escape(name_a)}</th>'
                 f'<th>score</th><th>{escape(name_b)}</th><th>score</th></tr></thead>'
                 f'<tbody>{"".join(rows)}</tbody></table>' if rows else "")
        sections.append(f"<h2>{escape(task)}</h2><p>{escape(summary)}</p>{table}")
    title = f"{name_a} vs {name_b}"
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{escape(title)}</h1>{''.join(sections)}</body></html>\n")
