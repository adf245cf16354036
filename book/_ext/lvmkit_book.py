"""Sphinx extension of the lvmkit book: small fixes to the HTML that jupyter-book's extensions produce.

* Each page would declare sphinx-thebe's `THEBE_JS_URL` (and sphinx-togglebutton's selector) twice, because those
  extensions register their inline scripts at `env-before-read-docs`, after the builder exists, so Sphinx adds them
  both to the builder and to the registry it copies into every page: a browser console error ("redeclaration of
  const THEBE_JS_URL"). `dedupe_scripts` keeps the first of identical scripts on every page.
"""
from __future__ import annotations


def dedupe_scripts(app, pagename, templatename, context, doctree) -> None:
    "Keep one of each identical script (same file or inline body, same priority and attributes) on the page."
    scripts = context.get("script_files")
    if scripts is not None:
        context["script_files"] = list(dict.fromkeys(scripts))


def setup(app):
    app.connect("html-page-context", dedupe_scripts, priority=900)   # after the other extensions have added theirs
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
