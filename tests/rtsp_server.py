"""A real RTSP server on 127.0.0.1 for the daemon tests (GStreamer's gst-rtsp-server).

Run by the tests with Debian's /usr/bin/python3 (the gi bindings are a Debian package, not in the
project's venv): `python3 rtsp_server.py PORT` serves rtsp://127.0.0.1:PORT/cam, a 320x240 MJPEG
test pattern at 15 fps, and prints `ready` once it listens. Debian: apt-get install python3-gi
gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good.
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

PIPELINE = ("( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate=15/1 "
            "! jpegenc ! rtpjpegpay name=pay0 pt=26 )")


def main(port: int) -> None:
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE)
    factory.set_shared(True)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        sys.exit(f"rtsp_server: cannot listen on 127.0.0.1:{port}")
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main(int(sys.argv[1]))
