"""The command line: flags (the only place that knows them), the converter's flags, the console.

May import every other sub-package; nothing imports it but main.py, convert_weights.py and __main__.
"""
