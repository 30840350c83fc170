"""The `fer-edge` command line: one verb per mode.

Verbs import their heavy dependencies (TensorFlow) only when they run, so the device-side verbs
work where only the `edge` extra is installed.
"""
from __future__ import annotations

import os
import signal
import threading

import click

from fer_edge import __version__
from fer_edge.errors import FerEdgeError


def _exit_on_sigterm(signum, _frame):
    # Python's default for SIGTERM ends the process on the spot; an exception instead runs the
    # `finally` blocks that remove temporary files (fer_edge.atomic) before exiting 128 + 15.
    raise SystemExit(128 + signum)


class Verbs(click.Group):
    """Turns user errors raised anywhere below into one line on stderr and exit status 1."""

    def invoke(self, ctx):
        if threading.current_thread() is threading.main_thread():  # verbs with their own handling (daemon) replace it
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        # OpenCV's own warnings (an unreadable TIFF, a stream it cannot open) repeat, in its words,
        # what the verb reports as one line naming the file; read when cv2 is first imported.
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
        try:
            return super().invoke(ctx)
        except FerEdgeError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=Verbs, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fer-edge")
def main() -> None:
    """Facial emotion recognition: train on FER2013, convert to int8 TFLite, run on the edge."""


from fer_edge.train.commands import calibrate, compare, data, evaluate, models, train  # noqa: E402

for _command in (data, models, train, evaluate, calibrate, compare):
    main.add_command(_command)

from fer_edge.edge_runtime.daemon.command import daemon  # noqa: E402
main.add_command(daemon)
from fer_edge.edge_runtime.commands import demo, predict; main.add_command(demo); main.add_command(predict)  # noqa: E402,E702

from fer_edge.convert.commands import benchmark, convert, inspect_command  # noqa: E402
main.add_command(convert)
main.add_command(inspect_command)
main.add_command(benchmark)
