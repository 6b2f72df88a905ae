"""MkDocs hook: the reference tables generated from the code, never maintained by hand.

A page asks for a generated table with a marker comment on a line of its own:

* ``<!-- coda-ws:configuration -->``: every server option (coda_ws.config.OPTIONS)
  with its default, flag, environment variable and Flask config key;
* ``<!-- coda-ws:cli -->``: every ``coda-ws`` subcommand and its options, from
  the argparse parsers;
* ``<!-- coda-ws:events -->``: every event type with its fields;
* ``<!-- coda-ws:metrics -->``: every metric of ``/metrics``, from a scrape.

``tests/test_docs.py`` builds the site with ``mkdocs build --strict`` and checks
the event table; ``tests/test_configuration.py`` checks that the option and CLI
tables name every option, flag and environment variable.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from coda_ws.docgen import cli_reference, configuration_reference, event_reference, metrics_reference

_MARKERS = {
    "<!-- coda-ws:configuration -->": configuration_reference,
    "<!-- coda-ws:cli -->": cli_reference,
    "<!-- coda-ws:events -->": event_reference,
    "<!-- coda-ws:metrics -->": metrics_reference,
}


def on_page_markdown(markdown, page, config, files):
    for marker, generate in _MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, generate())
    return markdown
