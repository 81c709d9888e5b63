"""Sphinx extension: emit each inline ``<script>`` once per page.

sphinx-thebe 0.3.1 and sphinx-togglebutton add inline scripts (``app.add_js_file(None,
body=...)``) after the HTML builder has collected its script list; Sphinx 7.4 then holds
them twice (once as ``None``, once as ``''`` from its registry), so every page declared
``const THEBE_JS_URL`` twice and the browser raised "Identifier 'THEBE_JS_URL' has already
been declared" (caught by ``tests/browser``). This drops the second copy of an inline
script with the same body and attributes.
"""

from __future__ import annotations

from typing import Any


def dedupe(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """Remove repeated inline scripts from the page's ``script_files`` (in place)."""
    seen: set[tuple] = set()
    kept = []
    for script in context.get("script_files", []):
        attrs = getattr(script, "attributes", {})
        key = (script.filename or "", tuple(sorted(attrs.items())))
        if "body" in attrs and key in seen:
            continue
        seen.add(key)
        kept.append(script)
    context["script_files"][:] = kept


def setup(app: Any) -> dict[str, Any]:
    app.connect("html-page-context", dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
