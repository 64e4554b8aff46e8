"""A pickle payload for the tests that checkpoints are loaded safely."""


class CodeOnLoad:
    """Unpickling this runs code: it creates the file ``marker``.

    Args:
        marker (str): the file the payload would create.
    """

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return exec, (f'open({self.marker!r}, "w").close()', )
