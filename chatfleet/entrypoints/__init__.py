"""The `chatfleet` command line (cli.py): each *_cmd.py parses its flags, builds configs and
runs a library function. Nothing in the library imports this package."""
