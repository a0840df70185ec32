"""titlegen: fine-tune seq2seq models to write Chinese news titles, and score them with tw_rouge."""

__version__ = "0.1.0"


class TitlegenError(Exception):
    """An error caused by the user's input (a file, a config, a model folder).

    Command-line entry points print its message without a traceback and exit with status 2.
    """
