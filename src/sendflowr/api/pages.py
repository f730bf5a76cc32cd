"""Small HTML result pages for the browser steps of connecting an ESP (the OAuth callback).

A brand's operator lands on these after Klaviyo's consent screen, so they are plain, accessible
HTML in words: never a traceback, a token, an authorisation code or a secret. Every text is
escaped; the pages load nothing from elsewhere, and `Referrer-Policy: no-referrer` keeps the
callback's query string (which carries the single-use code) out of any Referer header.
"""

from __future__ import annotations

from html import escape

from fastapi.responses import HTMLResponse

PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
}

_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - SendFlowr</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto;
       padding: 0 1rem; line-height: 1.5; color: #1a1a1a; background: #fff; }}
h1 {{ font-size: 1.5rem; }}
.ok {{ border-left: 0.4rem solid #1b7f3b; padding-left: 1rem; }}
.error {{ border-left: 0.4rem solid #b00020; padding-left: 1rem; }}
</style>
</head>
<body>
<main>
<div class="{kind}"{role}>
<h1>{title}</h1>
{paragraphs}
{link}
</div>
</main>
</body>
</html>
"""


def page(
    title: str, *paragraphs: str, status_code: int = 200, link: tuple[str, str] | None = None
) -> HTMLResponse:
    """A page with a heading, paragraphs of plain text and an optional link (a local path and
    its text), all escaped here."""
    ok = status_code < 400
    body = _TEMPLATE.format(
        title=escape(title),
        kind="ok" if ok else "error",
        role="" if ok else ' role="alert"',
        paragraphs="\n".join(f"<p>{escape(p)}</p>" for p in paragraphs),
        link=""
        if link is None or not link[0].startswith("/")
        else f'<p><a href="{escape(link[0])}">{escape(link[1])}</a></p>',
    )
    return HTMLResponse(body, status_code=status_code, headers=dict(PAGE_HEADERS))


def success_page(title: str, *paragraphs: str, link: tuple[str, str] | None = None) -> HTMLResponse:
    return page(title, *paragraphs, status_code=200, link=link)


def error_page(
    title: str, *paragraphs: str, status_code: int = 400, link: tuple[str, str] | None = None
) -> HTMLResponse:
    return page(title, *paragraphs, status_code=status_code, link=link)
