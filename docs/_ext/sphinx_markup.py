"""A Griffe extension: jaxcnn's docstrings are written for Sphinx's eye, the site reads Markdown.

Three bits of Sphinx/reStructuredText markup would otherwise reach the page as text:

- roles, ``:func:`fit``` or ``:class:`~jaxcnn.layers.Layer```, become code spans (`fit`,
  `Layer`: a ``~`` keeps the last dotted part, as in Sphinx);
- a paragraph ending in ``::`` introduces an indented literal block, which Markdown already
  shows as code; the ``::`` becomes ``:``;
- a doctest (``>>>`` lines and their output, up to a blank line) outside a Google-style
  ``Examples:`` section becomes a fenced ``pycon`` block.

The docstrings themselves stay as they are: ``python -m doctest`` and ``help()`` read them too.
mkdocs.yml loads this file by path (mkdocstrings' ``extensions`` option).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const):`(~?)([^`]+)`")


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def to_markdown(text: str) -> str:
    """The docstring ``text`` (already dedented) with the markup above turned into Markdown."""
    lines = _ROLE.sub(_role, text).split("\n")
    out: list[str] = []
    in_doctest = False
    for line in lines:
        if not in_doctest and line.startswith(">>>"):
            # A fence needs a blank line before it to start a block inside a paragraph.
            if out and out[-1].strip():
                out.append("")
            out.append("```pycon")
            in_doctest = True
        elif in_doctest and not line.strip():
            out.append("```")
            in_doctest = False
        if line.rstrip().endswith("::") and not in_doctest:
            line = line.rstrip()[:-1]
        out.append(line)
    if in_doctest:
        out.append("```")
    return "\n".join(out)


class SphinxMarkup(griffe.Extension):
    """Rewrite every docstring with :func:`to_markdown` once the package is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
