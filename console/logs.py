"""The console carries the pipeline's own lines; everything libraries say goes to the run's log file.

Hydra gives the root logger two handlers: the console (stdout) and ``<job folder>/run.log``. The
pipeline logs to the ``fractal_ad`` logger; ``setup`` keeps the console for those records (and for
anyone's errors) and leaves the file with everything: library INFO lines, Lightning's tips, Python
warnings (``logging.captureWarnings``). ``verbose=true`` leaves Hydra's console as it is.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("fractal_ad")
OWN = log.name


def log_file() -> str | None:
    """The run's log file (Hydra's file handler on the root logger), if there is one."""
    files = [h.baseFilename for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    return files[0] if files else None


def console_is_terminal() -> bool:
    return sys.stdout.isatty()


class ConsoleFilter(logging.Filter):
    """The pipeline's own lines and anyone's errors; progress lines only when the console is not a
    terminal (on a terminal the progress display redraws one line itself)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "progress", False) and console_is_terminal():
            return False
        return record.name.startswith(OWN) or record.levelno >= logging.ERROR


class ConsoleFormatter(logging.Formatter):
    """Own lines bare; other libraries' errors with their level and logger name."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name.startswith(OWN):
            return record.getMessage()
        return f"{record.levelname} [{record.name}] {record.getMessage()}"


def setup(verbose: bool = False) -> str | None:
    """Route the libraries' output to the root logger's handlers; return the run's log file."""
    # Lightning (when imported before logging was configured) and MLflow give their loggers their own
    # stderr handler and stop propagation: hand their records to the root logger, i.e. the log file
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.handlers and not name.startswith(OWN):
            logger.handlers = []
            logger.propagate = True
    log.setLevel(logging.INFO)
    if verbose:
        logging.captureWarnings(False)
        return log_file()
    logging.captureWarnings(True)  # warnings.warn -> logger "py.warnings" -> the log file
    import cv2  # already loaded by the libraries; its C++ warnings bypass Python, so they cannot reach the file

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:  # Hydra's console handler (FileHandler is a subclass)
            handler.filters = [ConsoleFilter()]
            handler.setFormatter(ConsoleFormatter())
    return log_file()


def stage_header(stage: str, detail: str = "") -> None:
    log.info(f"== {stage}{': ' + detail if detail else ''} ==")
