"""The views: magics, the widget, text/HTML drawings and the CLI. They parse or draw; the session decides."""
