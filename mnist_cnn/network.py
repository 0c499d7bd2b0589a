"""The network: the notebook's CNN built from model.* params, and the layers it trains with.

build_model is the notebook's Sequential net by default (Conv2D(32) > MaxPool > Conv2D(64) > MaxPool
> Dropout(0.25) > Flatten > Dense(128) > Dropout(0.5) > Dense(10, softmax)), with options beyond it:
more convolutions per block, "same" padding, strided convolutions, global pooling, batch normalisation and augmentation.
Two layers exist for training only, RandomAffine and FusedBatchNormalization; inference_model gives the network that
is saved, which loads with Keras alone.
"""
import math

from mnist_cnn.runner import quiet_tensorflow

tf = quiet_tensorflow()
import keras  # noqa: E402
from keras import layers  # noqa: E402


class RandomAffine(layers.Layer):
    """Random rotation, zoom and shift of each training image, composed into one affine map and
    resampled once (bilinear, black outside), with an elastic distortion in the same resampling, then
    strokes thinned or thickened, some images solarised,
    Gaussian noise on each pixel, and a rectangle of one random grey over half of the images (random
    erasing); the identity at inference, and left out of the saved model (inference_model). Keras'
    RandomRotation, RandomZoom and RandomTranslation in a row would interpolate three times, blurring the
    training images away from the crisp test images.

    rotation: up to this many degrees either way; zoom: scale by 1 +- up to this fraction (same for
    both axes); shift: up to this fraction of the height and width; stroke: up to this fraction of the
    way to the image's 3x3 dilation or erosion; solarize: the fraction of images solarised; noise: the
    noise's standard deviation; erase: the rectangle's largest area, as a fraction of the image's (its
    aspect ratio between 1:3 and 3:1, anywhere, clipped by the border; Zhong et al. 2017); elastic: the
    distortion's scale in pixels, elastic_sigma: its smoothness in pixels (displacements). Draws come
    from a seeded Keras SeedGenerator, so a seeded run repeats them. Every draw is scaled by `strength`:
    1, or 0 to pass the images through unchanged (AugmentationOff sets it for the last epochs).
    """

    def __init__(self, rotation=0.0, zoom=0.0, shift=0.0, seed=None, noise=0.0, erase=0.0, stroke=0.0, solarize=0.0,
                 elastic=0.0, elastic_sigma=4.0, **kwargs):
        super().__init__(**kwargs)
        self.rotation, self.zoom, self.shift, self.seed, self.noise = rotation, zoom, shift, seed, noise
        self.erase, self.stroke, self.solarize = erase, stroke, solarize
        self.elastic, self.elastic_sigma = elastic, elastic_sigma
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.strength = self.add_weight(shape=(), initializer="ones", trainable=False, name="strength")

    def call(self, inputs, training=None):
        if not training:
            return inputs
        batch, height, width = tf.shape(inputs)[0], inputs.shape[1], inputs.shape[2]

        def uniform(limit):
            return keras.random.uniform((batch,), -limit, limit, seed=self.seed_generator) * self.strength

        angle = uniform(self.rotation * math.pi / 180)
        scale = 1 + uniform(self.zoom)  # input pixels per output pixel: > 1 zooms out
        dx, dy = uniform(self.shift * width), uniform(self.shift * height)
        cx, cy = (width - 1) / 2, (height - 1) / 2
        a0, a1 = scale * tf.cos(angle), -scale * tf.sin(angle)  # output (x, y) -> input point, about the centre
        b0, b1 = -a1, a0
        zeros = tf.zeros_like(angle)
        transforms = tf.stack([a0, a1, cx - a0 * cx - a1 * cy - dx, b0, b1, cy - b0 * cx - b1 * cy - dy,
                               zeros, zeros], axis=1)
        if self.elastic:  # no draw at all without it: runs without elastic distortion repeat the earlier ones exactly
            outputs = self.warped(inputs, transforms, batch, height, width)
        else:
            outputs = tf.raw_ops.ImageProjectiveTransformV3(
                images=inputs, transforms=transforms, output_shape=[height, width], fill_value=0.0,
                interpolation="BILINEAR", fill_mode="CONSTANT")
        if self.stroke:
            outputs = self.restroked(outputs, batch)
        if self.solarize:
            outputs = self.solarized(outputs, batch)
        if self.noise:  # no draw at all without it: runs without noise repeat the earlier ones exactly
            noise = keras.random.normal(tf.shape(outputs), stddev=self.noise, seed=self.seed_generator)
            outputs += noise * self.strength
        if self.erase:
            outputs = self.erased(outputs, batch, height, width)
        return outputs

    def displacements(self, batch, height, width):
        """Each image's elastic distortion (Simard et al. 2003): a field of uniform noise in -1..1 for x and
        for y, smoothed by a Gaussian of `elastic_sigma` pixels (zero beyond the border) and scaled by
        `elastic` pixels. Neighbouring pixels move together: strokes bend and swell as a pen's do, where
        the affine map moves the whole digit alike. Shape (batch, height, width, 2): x, then y."""
        field = keras.random.uniform((batch, height, width, 2), -1.0, 1.0, seed=self.seed_generator)
        radius = max(1, math.ceil(3 * self.elastic_sigma))
        taps = [math.exp(-0.5 * (offset / self.elastic_sigma) ** 2) for offset in range(-radius, radius + 1)]
        taps = tf.constant([tap / sum(taps) for tap in taps], tf.float32)
        for shape in ((-1, 1, 1, 1), (1, -1, 1, 1)):  # the Gaussian along the rows, then along the columns
            kernel = tf.tile(tf.reshape(taps, shape), [1, 1, 2, 1])
            field = tf.nn.depthwise_conv2d(field, kernel, [1, 1, 1, 1], "SAME")
        return field * (self.elastic * self.strength)

    def warped(self, images, transforms, batch, height, width):
        """The affine map and the elastic distortion in one bilinear resampling, so the image is interpolated
        once: output pixel (x, y) reads the input at its affine point plus its displacement, each of the four
        neighbouring pixels outside the image read as black, as ImageProjectiveTransformV3 does (a test checks
        that the two agree without displacement)."""
        rows, columns = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32),
                                    indexing="ij")
        a0, a1, a2, b0, b1, b2, _, _ = tf.unstack(transforms[:, :, None, None], axis=1)  # each (batch, 1, 1)
        field = self.displacements(batch, height, width)
        x = a0 * columns + a1 * rows + a2 + field[..., 0]
        y = b0 * columns + b1 * rows + b2 + field[..., 1]
        x0, y0 = tf.floor(x), tf.floor(y)
        images_index = tf.broadcast_to(tf.range(batch)[:, None, None], tf.shape(x))

        def read(ys, xs):  # the pixels at integer (ys, xs), black outside the image
            inside = (xs >= 0) & (xs <= width - 1) & (ys >= 0) & (ys <= height - 1)
            at = tf.stack([images_index, tf.cast(tf.clip_by_value(ys, 0, height - 1), tf.int32),
                           tf.cast(tf.clip_by_value(xs, 0, width - 1), tf.int32)], axis=-1)
            return tf.gather_nd(images, at) * tf.cast(inside, images.dtype)[..., None]

        wx, wy = (x - x0)[..., None], (y - y0)[..., None]
        top = (1 - wx) * read(y0, x0) + wx * read(y0, x0 + 1)
        bottom = (1 - wx) * read(y0 + 1, x0) + wx * read(y0 + 1, x0 + 1)
        return (1 - wy) * top + wy * bottom

    def restroked(self, images, batch):
        """Strokes thinner or thicker: each image moved towards its 3x3 grey erosion or dilation by a random
        fraction of up to `stroke` (one pixel off or onto each side of every stroke at 1)."""
        amount = keras.random.uniform((batch,), -self.stroke, self.stroke, seed=self.seed_generator)
        amount = (amount * self.strength)[:, None, None, None]
        thicker = tf.nn.max_pool2d(images, 3, 1, "SAME")
        thinner = -tf.nn.max_pool2d(-images, 3, 1, "SAME")
        return images + tf.maximum(amount, 0) * (thicker - images) + tf.maximum(-amount, 0) * (thinner - images)

    def solarized(self, images, batch):
        """On a `solarize` fraction of the images, every pixel brighter than a random threshold (0-1) inverted
        (AugMix's solarize). On a digit on black the background stays, the saturated cores of the strokes go
        dark and their grey rims light: the digit becomes an outline of itself, its width set by the threshold."""
        chosen = keras.random.uniform((batch,), seed=self.seed_generator) < self.solarize * self.strength
        threshold = keras.random.uniform((batch,), seed=self.seed_generator)[:, None, None, None]
        flip = chosen[:, None, None, None] & (images > threshold)
        return tf.where(flip, 1 - images, images)

    def erased(self, images, batch, height, width):
        """A rectangle of one random grey (0-1) over each image, at random on half of them."""
        def draw(low=0.0, high=1.0):
            return keras.random.uniform((batch,), low, high, seed=self.seed_generator)

        area = draw(0.0, self.erase) * height * width
        aspect = tf.exp(draw(-math.log(3), math.log(3)))  # height / width
        h, w = tf.sqrt(area * aspect), tf.sqrt(area / aspect)
        top, left = draw() * (height + h) - h, draw() * (width + w) - w  # may hang over any edge
        rows = tf.range(height, dtype=tf.float32)[None, :, None]
        columns = tf.range(width, dtype=tf.float32)[None, None, :]
        inside = ((rows >= top[:, None, None]) & (rows < (top + h)[:, None, None])
                  & (columns >= left[:, None, None]) & (columns < (left + w)[:, None, None]))
        on = (draw() < 0.5)[:, None, None] & inside
        mask = tf.cast(on, images.dtype)[..., None] * self.strength
        grey = draw()[:, None, None, None]
        return images * (1 - mask) + grey * mask

    def get_config(self):
        return {**super().get_config(), "rotation": self.rotation, "zoom": self.zoom, "shift": self.shift,
                "seed": self.seed, "noise": self.noise, "erase": self.erase,
                "stroke": self.stroke, "solarize": self.solarize, "elastic": self.elastic,
                "elastic_sigma": self.elastic_sigma}


class AugmentationOff(keras.callbacks.Callback):
    """model.augment.off_last_epochs: the model's RandomAffine passes the images through unchanged
    from epoch `first` (0-based) on, so training ends on images like the ones it will be tested on."""

    def __init__(self, first):
        super().__init__()
        self.first = first

    def on_epoch_begin(self, epoch, logs=None):
        for layer in self.model.layers:
            if isinstance(layer, RandomAffine):
                layer.strength.assign(0.0 if epoch >= self.first else 1.0)


def augments(augment):
    return any(augment[key] for key in ("rotation", "shift", "zoom", "noise", "erase", "stroke", "solarize", "elastic"))


def augmentation(augment):
    """RandomAffine in front of the net when any of model.augment's transforms is on; nothing by
    default. float32 whatever the precision: the image transform has no bfloat16 kernel on CPU."""
    if not augments(augment):
        return []
    return [RandomAffine(augment["rotation"], augment["zoom"], augment["shift"], noise=augment["noise"],
                         erase=augment["erase"], stroke=augment["stroke"], solarize=augment["solarize"],
                         elastic=augment["elastic"], elastic_sigma=augment["elastic_sigma"],
                         dtype="float32")]


class FusedBatchNormalization(layers.BatchNormalization):
    """Keras' BatchNormalization, trained with TensorFlow's fused kernel on 4-D inputs (one oneDNN op
    on a CPU, cuDNN on a GPU) where Keras computes a dozen elementwise ops: on a 2-core CPU, batch
    normalisation cost the notebook's net +20 ms per step of 128 that way, +2 ms fused
    (bench/batch_norm.py). The same statistics, weights and moving averages; inference is Keras' own,
    and the saved model has plain BatchNormalization layers (inference_model), so loading it needs
    nothing from here."""

    def call(self, inputs, training=None, mask=None):
        if not training or len(inputs.shape) != 4 or self.axis not in (-1, 3) or mask is not None:
            return super().call(inputs, training=training, mask=mask)
        empty = tf.constant([], tf.float32)
        outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=tf.cast(self.gamma, tf.float32), offset=tf.cast(self.beta, tf.float32), mean=empty,
            variance=empty, epsilon=self.epsilon, data_format="NHWC", is_training=True)
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]), tf.float32)
        variance = variance * (count - 1) / count  # the kernel returns the unbiased variance; Keras keeps the other
        for average, value in ((self.moving_mean, mean), (self.moving_variance, variance)):
            average.assign(average * self.momentum + tf.stop_gradient(value) * (1 - self.momentum))
        return outputs


def inference_model(model):
    """What is saved: the trained network without its augmentation layers (the identity at inference),
    with Keras' own BatchNormalization for FusedBatchNormalization (same name and weights): a model
    that loads with Keras alone. The model itself where it has neither."""
    if not any(isinstance(layer, (RandomAffine, FusedBatchNormalization)) for layer in model.layers):
        return model

    def plain(layer):
        if not isinstance(layer, FusedBatchNormalization):
            return layer  # the same layer, weights shared
        copy = layers.BatchNormalization.from_config(layer.get_config())
        copy.build(layer.input.shape)
        copy.set_weights(layer.get_weights())
        return copy

    kept = [plain(layer) for layer in model.layers if not isinstance(layer, RandomAffine)]
    return keras.Sequential([keras.Input(shape=model.input_shape[1:])] + kept, name=model.name)


def batch_norm_momentum(steps):
    """The moving averages' momentum for a run of `steps` training steps: Keras' 0.99, or less for a run too
    short to forget the averages' starting values (mean 0, variance 1). At 0.99 a 2-epoch run of batch 256 on
    MNIST (376 steps) still weighs the starting variance by 0.99**376 = 2.3%, many times the variance of
    most of its layers' inputs, and saved a model at 10% validation accuracy that trained at 98%. The momentum
    is chosen so that the starting values weigh at most 1e-4 when training ends."""
    return min(0.99, math.exp(math.log(1e-4) / max(steps, 1)))


# model.global_pool: how the last conv block's maps become the dense layers' input. none keeps every position
# (the notebook's Flatten); average and max pool each map to one number, so the same strokes anywhere in the
# image give the same input: a digit off centre (MNIST-C's translate) reads as one in the centre
GLOBAL_POOL = {"none": layers.Flatten, "average": layers.GlobalAveragePooling2D, "max": layers.GlobalMaxPooling2D}


def build_model(model_params, input_shape, num_classes, dtype="float32", steps=None):
    """Conv-pool blocks, dropout, dense layers with dropout, softmax: the notebook's net by default.

    Options beyond the notebook: several convolutions per block, "same" padding, blocks that shrink their maps
    by a strided first convolution instead of max pooling (downsample: stride), global pooling for Flatten
    (GLOBAL_POOL), batch normalisation
    (conv/dense, then BatchNormalization, then relu; its momentum from the run's number of training steps,
    batch_norm_momentum), each image standardised over its pixels (LayerNormalization without a learnt
    scale or offset) and augmentation layers in front. dtype is the Keras dtype policy of the hidden
    layers (train.precision); the softmax layer stays float32, as Keras' mixed-precision guide advises, so
    probabilities and the loss are computed exactly.
    """
    momentum = 0.99 if steps is None else batch_norm_momentum(steps)

    def relu_layer(layer, *args, **kwargs):  # Conv2D or Dense, then relu; with batch_norm: no bias, BN, relu
        if not model_params["batch_norm"]:
            return [layer(*args, activation="relu", dtype=dtype, **kwargs)]
        return [layer(*args, use_bias=False, dtype=dtype, **kwargs),
                FusedBatchNormalization(momentum=momentum, dtype=dtype), layers.Activation("relu", dtype=dtype)]

    stack = [keras.Input(shape=input_shape)] + augmentation(model_params["augment"])
    if model_params["standardize"]:  # each image by its own mean and deviation; Keras' layer, so it loads anywhere.
        # epsilon 1e-6, not Keras' 1e-3: an MNIST digit's pixel variance is about 0.1, which 1e-3 would blur
        stack.append(layers.LayerNormalization(axis=(1, 2, 3), epsilon=1e-6, center=False, scale=False,
                                               dtype=dtype))
    pool, strided = model_params["pool_size"], model_params["downsample"] == "stride"
    for filters in model_params["conv_filters"]:
        for conv in range(model_params["convs_per_block"]):
            stack += relu_layer(layers.Conv2D, filters, model_params["kernel_size"], padding=model_params["padding"],
                                strides=pool if strided and conv == 0 else 1)
        if not strided:
            stack.append(layers.MaxPooling2D(pool, dtype=dtype))
    stack += [layers.Dropout(model_params["conv_dropout"], dtype=dtype),
              GLOBAL_POOL[model_params["global_pool"]](dtype=dtype)]
    for units in model_params["dense_units"]:
        stack += relu_layer(layers.Dense, units) + [layers.Dropout(model_params["dense_dropout"], dtype=dtype)]
    stack.append(layers.Dense(num_classes, activation="softmax", dtype="float32"))
    return keras.Sequential(stack, name="cnn")


def float32_network(model):
    """The same network and weights computing in float32: what export writes (ONNX requires a float32 dtype
    policy). A model trained in mixed precision keeps float32 weights, so nothing is rounded; the model
    itself where it is float32 already."""
    def as_float32(node):
        if isinstance(node, dict):
            if node.get("class_name") == "DTypePolicy":
                return {**node, "config": {**node["config"], "name": "float32"}}
            return {key: as_float32(value) for key, value in node.items()}
        if isinstance(node, list):
            return [as_float32(value) for value in node]
        return node

    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model
    copy = model.__class__.from_config(as_float32(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy
