/*
 * ingest: the content hash of a decoded batch (struct ingest_batch's
 * hash). Two uploads of one identity are "the same content" exactly when
 * their hashes agree (docs/API.md, "Upload": a retry is a duplicate, other
 * content a conflict), so the hash is over decoded values only, in a
 * canonical stream, and the same on any host.
 */
#include "bnstat/ingest.h"
#include "ingest_private.h"

#include <stdint.h>
#include <string.h>

/*
 * A 128-bit non-cryptographic hash over a stream of 64-bit words, in the
 * manner of xxh64: four independent lanes (so the loop runs at several
 * GB/s), each word mixed as acc = rotl(acc + w*P2, 31) * P1, which for a
 * given acc is a bijection of w. The two output halves are two different
 * foldings of the 256-bit lane state, each followed by a full avalanche.
 *
 * The stream is canonical: every item is a 64-bit word, a double is its
 * IEEE-754 bit pattern (= its little-endian bytes read as a little-endian
 * word), and name bytes are packed little-endian into words after their
 * length. So the hash depends on decoded content only, on any host.
 *
 * Changing anything here changes stored hashes: a retry of a batch stored
 * before the change would then be answered 409 instead of "duplicate".
 */
#define HASH_P1 0x9E3779B185EBCA87ULL
#define HASH_P2 0xC2B2AE3D27D4EB4FULL
#define HASH_P3 0x165667B19E3779F9ULL
#define HASH_P4 0x85EBCA77C2B2AE63ULL
#define HASH_P5 0x27D4EB2F165667C5ULL

struct hasher {
	uint64_t v[4];
	uint64_t buf[4];
	unsigned nbuf;
	uint64_t nwords;
};

static inline uint64_t rotl64(uint64_t x, unsigned r)
{
	return (x << r) | (x >> (64 - r));
}

static inline uint64_t hash_round(uint64_t acc, uint64_t w)
{
	acc += w * HASH_P2;
	acc = rotl64(acc, 31);
	return acc * HASH_P1;
}

static uint64_t hash_avalanche(uint64_t h)
{
	h ^= h >> 33;
	h *= HASH_P2;
	h ^= h >> 29;
	h *= HASH_P3;
	h ^= h >> 32;
	return h;
}

static uint64_t hash_merge(uint64_t h, uint64_t lane)
{
	h ^= hash_round(0, lane);
	return h * HASH_P1 + HASH_P4;
}

static void hash_init(struct hasher *h)
{
	/* xxh64's lane seeds for seed 0x626e73746174 ("bnstat") */
	const uint64_t seed = 0x626e73746174ULL;

	h->v[0] = seed + HASH_P1 + HASH_P2;
	h->v[1] = seed + HASH_P2;
	h->v[2] = seed;
	h->v[3] = seed - HASH_P1;
	h->nbuf = 0;
	h->nwords = 0;
}

static inline void hash_block(struct hasher *h, const uint64_t w[4])
{
	h->v[0] = hash_round(h->v[0], w[0]);
	h->v[1] = hash_round(h->v[1], w[1]);
	h->v[2] = hash_round(h->v[2], w[2]);
	h->v[3] = hash_round(h->v[3], w[3]);
}

static inline void hash_word(struct hasher *h, uint64_t w)
{
	h->buf[h->nbuf++] = w;
	h->nwords++;
	if (h->nbuf == 4) {
		hash_block(h, h->buf);
		h->nbuf = 0;
	}
}

static void hash_doubles(struct hasher *h, const double *d, size_t n)
{
	uint64_t w[4];

	while (n > 0 && h->nbuf != 0) {
		memcpy(&w[0], d, 8);
		hash_word(h, w[0]);
		d++;
		n--;
	}
	h->nwords += n - n % 4;
	for (; n >= 4; n -= 4, d += 4) {
		memcpy(w, d, sizeof(w));
		hash_block(h, w);
	}
	for (; n > 0; n--, d++) {
		memcpy(&w[0], d, 8);
		hash_word(h, w[0]);
	}
}

static void hash_bytes(struct hasher *h, const char *s, size_t len)
{
	size_t i;
	uint64_t w = 0;

	hash_word(h, (uint64_t)len);
	for (i = 0; i < len; i++) {
		w |= (uint64_t)(unsigned char)s[i] << (8 * (i % 8));
		if (i % 8 == 7) {
			hash_word(h, w);
			w = 0;
		}
	}
	if (len % 8 != 0)
		hash_word(h, w);
}

static void hash_final(struct hasher *h, uint8_t out[INGEST_HASH_SIZE])
{
	uint64_t len, lo, hi, v0, v1, v2, v3;
	int i;

	len = h->nwords;
	/* zero padding is unambiguous: the word count is mixed in below */
	while (h->nbuf != 0)
		hash_word(h, 0);
	v0 = h->v[0];
	v1 = h->v[1];
	v2 = h->v[2];
	v3 = h->v[3];

	lo = rotl64(v0, 1) + rotl64(v1, 7) + rotl64(v2, 12) + rotl64(v3, 18);
	lo = hash_merge(lo, v0);
	lo = hash_merge(lo, v1);
	lo = hash_merge(lo, v2);
	lo = hash_merge(lo, v3);
	lo = hash_avalanche(lo + len * 8);

	hi = rotl64(v3, 5) + rotl64(v2, 23) + rotl64(v1, 37) + rotl64(v0, 47);
	hi ^= HASH_P5;
	hi = hash_merge(hi, v3 ^ rotl64(v1, 29));
	hi = hash_merge(hi, v2 ^ rotl64(v0, 41));
	hi = hash_merge(hi, v1 + v2);
	hi = hash_merge(hi, v0 + v3);
	hi = hash_avalanche(hi ^ (len * HASH_P3));

	for (i = 0; i < 8; i++) {
		out[i] = (uint8_t)(lo >> (8 * i));
		out[8 + i] = (uint8_t)(hi >> (8 * i));
	}
}

/*
 * Stream: var_kind, n_layers, then per layer in name order: name (length,
 * bytes), count, channels, has_ema, mean[], var[], and when has_ema
 * ema_mean[], ema_var[].
 */
void ingest_batch_hash(struct ingest_batch *b)
{
	struct hasher h;
	size_t i;

	hash_init(&h);
	hash_word(&h, (uint64_t)b->var_kind);
	hash_word(&h, (uint64_t)b->n_layers);
	for (i = 0; i < b->n_layers; i++) {
		const struct ingest_layer *l = &b->layers[i];
		bool has_ema = l->ema_mean != NULL;

		hash_bytes(&h, l->name, strlen(l->name));
		hash_word(&h, (uint64_t)l->count);
		hash_word(&h, (uint64_t)l->channels);
		hash_word(&h, has_ema ? 1 : 0);
		if (l->channels == 0)
			continue;
		hash_doubles(&h, l->mean, l->channels);
		hash_doubles(&h, l->var, l->channels);
		if (has_ema) {
			hash_doubles(&h, l->ema_mean, l->channels);
			hash_doubles(&h, l->ema_var, l->channels);
		}
	}
	hash_final(&h, b->hash);
}
