"""configs/digits.py with the test-only kit of tests/plugins/toy_method.py: its network
(``toy_mlp``), its two-network objective and its guidance transform (shift 0), which the
config's ``imports`` registers."""
import configs.digits as digits  # the repository root is on PYTHONPATH in the tests
from jaxdiff.guidance import guidance_config
from jaxdiff.objectives import objective_config
from tests.plugins import toy_method  # registers the toy components


def get_config():
    config = digits.get_config()
    config.imports = ("tests.plugins.toy_method",)
    config.model = toy_method.mlp_config()
    config.train.batch_size = 16
    config.train.progress_bar = False
    config.sample.steps = 2
    config.sample.grid_per_class = 1
    config.train.num_steps = 6
    config.train.checkpoint_every = 2
    config.train.sample_every = 2
    config.train.log_every = 1
    config.objective = objective_config("toy_two_net")
    config.guidance = guidance_config("toy_shift", shift=0.0)
    return config
