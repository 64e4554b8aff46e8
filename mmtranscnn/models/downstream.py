"""Registration of our models in mmdet's, mmseg's and mmpretrain's registries.

A config whose default scope is ``mmdet`` looks a bare ``type='TransCNN'`` up
in mmdet's registry and its parents only, never in a sibling scope such as
``mmtranscnn``. So after ``custom_imports=dict(imports=['mmtranscnn'])`` the
bare name resolves only if the class is also registered there. None of these
codebases is required: each is registered into when it is installed and
imports cleanly.
"""
import importlib
import importlib.util
import warnings

DOWNSTREAM_SCOPES = ('mmdet', 'mmseg', 'mmpretrain')


def _exported_models():
    from .hmhsa import HMHSA
    from .transcnn import TransCNN
    return {'TransCNN': TransCNN, 'HMHSA': HMHSA}


def register_in_downstream_scopes() -> list:
    """Register TransCNN and HMHSA where the downstream codebases look.

    Returns:
        list[str]: the scopes registered into.
    """
    done = []
    for scope in DOWNSTREAM_SCOPES:
        if importlib.util.find_spec(scope) is None:
            continue
        try:
            registry = importlib.import_module(f'{scope}.registry').MODELS
        except Exception as exc:  # a broken install must not break ours
            warnings.warn(f'mmtranscnn: {scope} is installed but its registry '
                          f'failed to import ({exc!r}); type="TransCNN" will '
                          f'not resolve in {scope} configs (use '
                          f'type="mmtranscnn.TransCNN" or fix {scope}).')
            continue
        for name, cls in _exported_models().items():
            # module_dict, not get(): get() would import all of the
            # codebase's models to search for the name.
            if registry.module_dict.get(name) is not cls:
                registry.register_module(name=name, module=cls, force=True)
        done.append(scope)
    return done
