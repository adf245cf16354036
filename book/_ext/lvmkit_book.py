"""Sphinx extension of the lvmkit book: small fixes to the HTML that jupyter-book's extensions produce.

* Each page would declare sphinx-thebe's `THEBE_JS_URL` (and sphinx-togglebutton's selector) twice, because those
  extensions register their inline scripts at `env-before-read-docs`, after the builder exists, so Sphinx adds them
  both to the builder and to the registry it copies into every page: a browser console error ("redeclaration of
  const THEBE_JS_URL"). `dedupe_scripts` keeps the first of identical scripts on every page.
* MathJax, the Jupyter widget manager and RequireJS come from CDNs by default, so offline, or behind a firewall, the
  book shows raw LaTeX and no widget. `local_assets` serves local copies instead, from the npm packages pinned in
  book/package.json (install them with `npm ci --prefix book`): MathJax 3's es5 build, @jupyter-widgets/html-manager's
  embed-amd.js bundle (the standard widgets included) and require.js, copied into the book's `_static`.
"""
from __future__ import annotations
import shutil
from pathlib import Path
from sphinx.errors import ExtensionError

ASSETS = {  # what the pages load -> where it comes from in book/node_modules
    "mathjax": "mathjax/es5",
    "@jupyter-widgets/html-manager/dist": "@jupyter-widgets/html-manager/dist",
    "require.js": "requirejs/require.js",
}


# Loaded after require.js and before the widget bundle. (1) The bundle asks RequireJS for its fonts under
# @jupyter-widgets/html-manager/dist/, relative to RequireJS's base URL, which is the page's folder unless set: point it at
# _static. (2) The widget manager typesets math through MathJax 2's MathJax.Hub.Queue; the book loads MathJax 3: give it
# that one call, mapped onto MathJax 3's typesetPromise.
WIDGET_SETUP = """// lvmkit book (book/_ext/lvmkit_book.py): RequireJS base URL and a MathJax 2 call for the widget manager
(function () {
  var s = document.querySelector('script[src*="require.js"]');
  if (s && window.require) { require.config({baseUrl: s.src.replace(/require\\.js.*$/, '')}); }
  window.addEventListener('load', function () {
    var M = window.MathJax;
    if (!M || M.Hub) { return; }
    M.Hub = {Queue: function () {
      var els = [];
      for (var i = 0; i < arguments.length; i++) { var a = arguments[i]; if (Array.isArray(a) && a[0] === 'Typeset' && a[2]) { els.push(a[2]); } }
      var ready = M.startup && M.startup.promise ? M.startup.promise : Promise.resolve();
      return ready.then(function () { return M.typesetPromise ? M.typesetPromise(els.length ? els : undefined) : null; });
    }};
  });
})();
"""


# Results tables are wide (a run, its numbers, its cost): at 1280 px the article column is about 690 px wide, and the
# headline numbers at the right end of a chapter's table were off-screen. Smaller type and padding in tables.
TABLE_CSS = """/* lvmkit book (book/_ext/lvmkit_book.py): compact tables */
.bd-article table { font-size: 0.78rem; }
.bd-article table th, .bd-article table td { padding: 0.2rem 0.35rem; }
"""


def dedupe_scripts(app, pagename, templatename, context, doctree) -> None:
    "Keep one of each identical script (same file or inline body, same priority and attributes) on the page."
    scripts = context.get("script_files")
    if scripts is not None:
        seen, keep = set(), []
        for s in scripts:                                   # an inline script's filename is None from one path and '' from the other
            key = (getattr(s, "filename", s) or None, getattr(s, "priority", 0), tuple(sorted(getattr(s, "attributes", {}).items())))
            if key not in seen: seen.add(key); keep.append(s)
        scripts[:] = keep                                   # in place: the list is the builder's own, which later handlers extend


def local_assets(app, config) -> None:
    "Copy the pinned browser scripts into book/_assets (a static path) and point MathJax and the widget manager at them."
    book = Path(app.confdir) / "book"
    modules, out = book / "node_modules", book / "_assets"
    missing = [src for src in ASSETS.values() if not (modules / src).exists()]
    if missing:
        raise ExtensionError(f"the book's local browser scripts are missing ({', '.join(missing)} in {modules}): run `npm ci --prefix book` first")
    shutil.rmtree(out, ignore_errors=True); out.mkdir()
    for dest, src in ASSETS.items():
        s = modules / src
        if s.is_dir(): shutil.copytree(s, out / dest, ignore=shutil.ignore_patterns("*.map", "*.LICENSE.txt", "node-main.js"))
        else: shutil.copy(s, out / dest)
    config.html_static_path = [*config.html_static_path, str(out)]
    config.mathjax_path = "mathjax/tex-mml-chtml.js"                               # relative to _static
    # The widget bundle asks RequireJS for its fonts under @jupyter-widgets/html-manager/dist/, relative to RequireJS's base URL,
    # which is the page's folder unless set: point it at _static, where that folder is.
    (out / "widget-setup.js").write_text(WIDGET_SETUP)
    (out / "lvmkit-book.css").write_text(TABLE_CSS)
    config.nb_ipywidgets_js = {"require.js": {}, "widget-setup.js": {}, "@jupyter-widgets/html-manager/dist/embed-amd.js": {}}


def setup(app):
    app.add_css_file("lvmkit-book.css")
    app.connect("config-inited", local_assets)
    # early: Sphinx emits html-page-context with emit_firstresult, so a handler after one that returns a template would not run
    app.connect("html-page-context", dedupe_scripts, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "2"}
