"""Paper reproductions: small, bounded experiments that check one claim of a paper each.

Every module registers its reproduction in ``jaxdiff.reproduce.REPRODUCTIONS`` when imported;
``jaxdiff reproduce --list`` (from a checkout: ``python3 -m jaxdiff.reproduce --list``) imports
them all.  ``jaxdiff reproduce NAME`` runs one and writes ``docs/methods/NAME.md``, ``.json`` and
``.png``; ``docs/methods.md`` is the index of every paper method and its reproduction.
"""
