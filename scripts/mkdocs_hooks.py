"""MkDocs hooks of the documentation site (mkdocs.yml ``hooks:``).

The docstrings are written for Sphinx-style readers (``:class:`~anchor_stun.Message```), which
mkdocstrings renders as the role's name followed by the code: ``:class:<code>~anchor_stun...``.
:func:`on_page_content` drops the role prefix and the ``~`` that only tells Sphinx to shorten
the name, leaving the code.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["on_page_content"]

_ROLE = re.compile(r":(?:py:)?(?:meth|class|func|mod|attr|data|exc|obj|const|term|rfc):(?=<code)")
_TILDE = re.compile(r"(<code[^>]*>)~")


def on_page_content(html: str, **_: Any) -> str:
    """The page's HTML with Sphinx role prefixes removed before inline code."""
    return _TILDE.sub(r"\1", _ROLE.sub("", html))
