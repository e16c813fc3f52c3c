"""One exception type for user mistakes, so the CLI can print one line instead of a traceback."""


class MarketGPTError(Exception):
    """A problem with the user's input (file, asset, row, config key), stated in one line."""
