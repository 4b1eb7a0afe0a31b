"""A small conditional MLP on 2-D data for training tests against the exact mixture: the
network (x, c_noise, cond) -> (B, 2) of a Denoiser, as (graphdef, pure parameter dict)."""
import jax
import jax.numpy as jnp


def mlp_2d(num_classes: int, width: int = 64, seed: int = 0, guidance_embedding: bool = False):
    """guidance_embedding: the embedding also takes a guidance weight w (a guided student)."""
    from flax import nnx

    from jaxdiff.models import layers

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.embed = layers.ConditionEmbedding(width, freq_dim=32, num_classes=num_classes,
                                                   cond_dim=0, noise_scale=1000.0,
                                                   dtype=jnp.float32, rngs=rngs,
                                                   guidance_embedding=guidance_embedding)
            self.inp = nnx.Linear(2, width, rngs=rngs)
            self.hidden = nnx.Linear(width, width, rngs=rngs)
            self.out = nnx.Linear(width, 2, rngs=rngs)

        def __call__(self, x, c_noise, cond=None, dropout_key=None):
            e = self.embed(c_noise, cond)
            h = jax.nn.silu(self.inp(x) + e)
            return self.out(jax.nn.silu(self.hidden(h) + e))

    graphdef, state = nnx.split(MLP(nnx.Rngs(seed)))
    return graphdef, nnx.to_pure_dict(state)
