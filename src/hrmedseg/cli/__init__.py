"""Command line: ``hrmedseg VERB ...``; each verb parses its arguments and calls the library."""
