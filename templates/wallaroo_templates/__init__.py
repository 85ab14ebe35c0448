"""The app skeletons `wallaroo init NAME --template T` copies (one folder per template).

A package only so that the skeletons ship in the wheel next to `wallaroo` and are found with
importlib.resources; the files are data: a name ending in `.tmpl` is written without that
suffix, with every `{{name}}` replaced by the project's name."""
