"""Every page of the built book, opened in headless Chromium with no network but 127.0.0.1, as a reader would see it.

    python .ci/book_browser.py _build/html     (CI, after the book build; needs playwright and a Chromium)

Per page: MathJax typeset every formula (no raw LaTeX left in a .math element), every image loaded, the widget explorer
drawn from its stored state wherever a page stores one, the solutions (dropdown admonitions) collapsed, no traceback or
warning text in the outputs, no console error, no request to another site, every table whole in a 1280-px window (no column scrolled out of
sight); and every internal link of the page points to a file that exists.
"""
from __future__ import annotations
import functools, http.server, re, shutil, sys, threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
BAD_TEXT = ("Traceback (most recent call last)", "Warning:", "UserWarning", "DeprecationWarning")
LOG_LINE = re.compile(r"^[WE]\d{4} \d\d:\d\d:\d\d\.\d+ ", re.M)     # a warning or error line of torch's logging ("W1201 00:49:53.19 ...")

CHECK = r"""async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  await new Promise(r => setTimeout(r, 300));
  const maths = [...document.querySelectorAll('.math')];
  const raw = maths.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.trim().slice(0, 60));
  const imgs = [...document.querySelectorAll('img')].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'));
  const state = document.querySelector('script[type="application/vnd.jupyter.widget-state+json"]') !== null;
  const widgets = document.querySelectorAll('.jupyter-widgets, .widget-container, .lm-Widget').length;
  const drops = [...document.querySelectorAll('div.dropdown.admonition')];
  const open = drops.filter(d => !d.classList.contains('toggle-hidden')).length;
  const outs = [...document.querySelectorAll('.cell_output')].map(o => o.innerText);
  const links = [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'));
  const vw = document.documentElement.clientWidth;      // every table readable in the window: nothing cut off by a scrolling box
  const clip = el => { let r = vw; for (let a = el.parentElement; a; a = a.parentElement) {
      const s = getComputedStyle(a); if (s.overflowX !== 'visible') r = Math.min(r, a.getBoundingClientRect().right); } return r; };
  const hidden = [...document.querySelectorAll('article table')].filter(t => {
    const cells = t.rows.length ? t.rows[0].cells : [];
    return cells.length && cells[cells.length - 1].getBoundingClientRect().right > clip(t) + 1;
  }).map(t => t.rows[0].innerText.slice(0, 50).replace(/\s+/g, ' '));
  return {maths: maths.length, raw, imgs, state, widgets, drops: drops.length, open, outs, links, hidden};
}"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


def serve(root: Path):
    handler = functools.partial(_Quiet, directory=str(root))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def main(root: Path) -> int:
    from playwright.sync_api import sync_playwright
    if CHROMIUM is None: print("no Chromium found (apt install chromium)", file=sys.stderr); return 1
    pages = sorted(p for p in root.rglob("*.html") if "_static" not in p.parts and p.name not in ("genindex.html", "search.html")
                   and 'http-equiv="refresh"' not in p.read_text().lower())              # index.html only redirects to the first page
    srv = serve(root); base = f"http://127.0.0.1:{srv.server_address[1]}/"
    problems, totals = [], dict(pages=0, maths=0, widgets=0, drops=0, links=0)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        remote = []
        ctx.route("**/*", lambda route: (route.continue_() if route.request.url.startswith(base)
                                          else (remote.append(route.request.url), route.abort())))
        for p in pages:
            rel = p.relative_to(root).as_posix()
            page = ctx.new_page(); errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "invalid theme mode" not in m.text else None)   # the theme's first-visit notice
            page.on("pageerror", lambda e: errors.append(str(e)))
            remote.clear()
            page.goto(base + rel, wait_until="load")
            r = page.evaluate(CHECK)
            page.close()
            totals["pages"] += 1; totals["maths"] += r["maths"]; totals["widgets"] += r["widgets"]; totals["drops"] += r["drops"]
            if r["raw"]: problems.append(f"{rel}: {len(r['raw'])} formulas not typeset, e.g. {r['raw'][0]!r}")
            if r["imgs"]: problems.append(f"{rel}: images not loaded: {r['imgs'][:3]}")
            if r["state"] and not r["widgets"]: problems.append(f"{rel}: stores widget state but draws no widget")
            if r["hidden"]: problems.append(f"{rel}: at 1280 px, tables cut off on the right: {r['hidden'][:2]}")
            if r["open"]: problems.append(f"{rel}: {r['open']} of {r['drops']} solutions are open")
            bad = [t for o in r["outs"] for t in BAD_TEXT if t in o] + [m.group(0).strip() for o in r["outs"] for m in LOG_LINE.finditer(o)]
            if bad: problems.append(f"{rel}: outputs contain {sorted(set(bad))}")
            if errors: problems.append(f"{rel}: console errors: {errors[:3]}")
            if remote: problems.append(f"{rel}: requests to other sites: {sorted(set(remote))[:3]}")
            for href in r["links"]:
                u = urlsplit(href)
                if u.scheme or u.netloc or href.startswith(("#", "mailto:", "javascript:")): continue
                target = (p.parent / unquote(u.path)).resolve() if u.path else p
                totals["links"] += 1
                if not target.exists(): problems.append(f"{rel}: broken link {href}")
        browser.close()
    srv.shutdown()
    print(f"book in Chromium: {totals['pages']} pages, {totals['maths']} formulas, {totals['widgets']} widget elements, "
          f"{totals['drops']} solutions, {totals['links']} internal links; problems: {len(problems)}")
    for x in problems[:40]: print("  " + x)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "_build/html")))
