"""``edgebn profile``: each operator of a .tflite timed isolated and in context, and two
profiles diffed operator by operator."""
