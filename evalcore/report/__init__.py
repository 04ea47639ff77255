"""Reports: what a user reads about runs, built only from what a run recorded. Tables for
`status` and the summary (`tables`), the data behind an HTML report (`data`, `provenance`), the
HTML report and its charts (`html`, `charts`, Jinja2 `templates/`), two runs compared (`compare`),
and a run exported as SQLite tables (`export_db`).

May import: `evalcore.errors`, `evalcore.engine` (to read ledgers and run folders) and below.
Never writes to a run's ledger.
"""
