"""pystray's backends, named: it picks one when imported, so the hook cannot import it to look.

PyInstaller's own pystray hook imports pystray to list them, which fails without a display
(a build machine, CI). This one takes its place through the spec's `hookspath`, with the
backends pystray can pick on the platform being built for.
"""

import sys

hiddenimports = ["pystray._base", "pystray._dummy", "pystray._util"]
if sys.platform == "win32":
    hiddenimports += ["pystray._win32", "pystray._util.win32"]
elif sys.platform == "darwin":
    hiddenimports += ["pystray._darwin"]
else:
    hiddenimports += [
        "pystray._appindicator",
        "pystray._gtk",
        "pystray._util.gtk",
        "pystray._util.notify_dbus",
        "pystray._xorg",
    ]
