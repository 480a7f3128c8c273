"""ORT's exception module path; the classes are tritort.errors'."""
from ..errors import *  # noqa: F401,F403
from ..errors import __all__  # noqa: F401
