"""The command-line layer, above the engine: compose a config, validate it once (validate.py), build a run from
it (compose.py), and turn every user error into one line and an exit code (errors.py); entry.py starts
train.py, sanity_check.py and each ``python -m analysis.<tool>``. Nothing below imports it."""
