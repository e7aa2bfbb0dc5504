"""The `dyme` commands, one module per command group: parse the options, call the engine, render with rich.

User errors raised by the engine (`errors.UserError`) are not caught here: the root app in `cli.py` turns
them into one line and exit code 2.
"""
