/*
 * bench_model.c: the ResNet-50 BatchNorm table (bench_model.h).
 */
#include "bench_model.h"

#include "bench_util.h"

/*
 * In named_modules() order. A stem (conv1/bn1 at 112x112 for a 224x224
 * input, then max-pooling to 56x56) and four stages of Bottleneck blocks
 * (3, 4, 6, 3 blocks; widths 64, 128, 256, 512; expansion 4). Each block
 * has bn1 (width, after the 1x1 conv, at the block's input resolution),
 * bn2 (width, after the 3x3 conv, which carries the stride in torchvision's
 * "v1.5" ResNet), bn3 (4 * width); the first block of each stage also has
 * downsample = Sequential(conv1x1, BatchNorm2d), whose norm is
 * "downsample.1", at the block's output resolution. layers_init() fills in
 * count and offset.
 */
struct bn_layer layers[] = {
	{ "bn1", 64, 112, 0, 0 },
	{ "layer1.0.bn1", 64, 56, 0, 0 },
	{ "layer1.0.bn2", 64, 56, 0, 0 },
	{ "layer1.0.bn3", 256, 56, 0, 0 },
	{ "layer1.0.downsample.1", 256, 56, 0, 0 },
	{ "layer1.1.bn1", 64, 56, 0, 0 },
	{ "layer1.1.bn2", 64, 56, 0, 0 },
	{ "layer1.1.bn3", 256, 56, 0, 0 },
	{ "layer1.2.bn1", 64, 56, 0, 0 },
	{ "layer1.2.bn2", 64, 56, 0, 0 },
	{ "layer1.2.bn3", 256, 56, 0, 0 },
	{ "layer2.0.bn1", 128, 56, 0, 0 },
	{ "layer2.0.bn2", 128, 28, 0, 0 },
	{ "layer2.0.bn3", 512, 28, 0, 0 },
	{ "layer2.0.downsample.1", 512, 28, 0, 0 },
	{ "layer2.1.bn1", 128, 28, 0, 0 },
	{ "layer2.1.bn2", 128, 28, 0, 0 },
	{ "layer2.1.bn3", 512, 28, 0, 0 },
	{ "layer2.2.bn1", 128, 28, 0, 0 },
	{ "layer2.2.bn2", 128, 28, 0, 0 },
	{ "layer2.2.bn3", 512, 28, 0, 0 },
	{ "layer2.3.bn1", 128, 28, 0, 0 },
	{ "layer2.3.bn2", 128, 28, 0, 0 },
	{ "layer2.3.bn3", 512, 28, 0, 0 },
	{ "layer3.0.bn1", 256, 28, 0, 0 },
	{ "layer3.0.bn2", 256, 14, 0, 0 },
	{ "layer3.0.bn3", 1024, 14, 0, 0 },
	{ "layer3.0.downsample.1", 1024, 14, 0, 0 },
	{ "layer3.1.bn1", 256, 14, 0, 0 },
	{ "layer3.1.bn2", 256, 14, 0, 0 },
	{ "layer3.1.bn3", 1024, 14, 0, 0 },
	{ "layer3.2.bn1", 256, 14, 0, 0 },
	{ "layer3.2.bn2", 256, 14, 0, 0 },
	{ "layer3.2.bn3", 1024, 14, 0, 0 },
	{ "layer3.3.bn1", 256, 14, 0, 0 },
	{ "layer3.3.bn2", 256, 14, 0, 0 },
	{ "layer3.3.bn3", 1024, 14, 0, 0 },
	{ "layer3.4.bn1", 256, 14, 0, 0 },
	{ "layer3.4.bn2", 256, 14, 0, 0 },
	{ "layer3.4.bn3", 1024, 14, 0, 0 },
	{ "layer3.5.bn1", 256, 14, 0, 0 },
	{ "layer3.5.bn2", 256, 14, 0, 0 },
	{ "layer3.5.bn3", 1024, 14, 0, 0 },
	{ "layer4.0.bn1", 512, 14, 0, 0 },
	{ "layer4.0.bn2", 512, 7, 0, 0 },
	{ "layer4.0.bn3", 2048, 7, 0, 0 },
	{ "layer4.0.downsample.1", 2048, 7, 0, 0 },
	{ "layer4.1.bn1", 512, 7, 0, 0 },
	{ "layer4.1.bn2", 512, 7, 0, 0 },
	{ "layer4.1.bn3", 2048, 7, 0, 0 },
	{ "layer4.2.bn1", 512, 7, 0, 0 },
	{ "layer4.2.bn2", 512, 7, 0, 0 },
	{ "layer4.2.bn3", 2048, 7, 0, 0 },
};

size_t n_channels;

void layers_init(void)
{
	size_t i, n = sizeof(layers) / sizeof(layers[0]);

	n_channels = 0;
	for (i = 0; i < n; i++) {
		layers[i].count = (int64_t)NBS * layers[i].hw * layers[i].hw;
		layers[i].offset = n_channels;
		n_channels += layers[i].channels;
	}
	if (n != RESNET50_LAYERS || n_channels != RESNET50_CHANNELS)
		die("resnet50 layer table is wrong: %zu layers, %zu channels (want %d, %d)", n,
		    n_channels, RESNET50_LAYERS, RESNET50_CHANNELS);
}
