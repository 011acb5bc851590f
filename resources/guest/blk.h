/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: virtio-blk constants (virtio 1.2, 5.2) shared by the
 * block driver (blk.S) and its scenarios (blk_io.S, blk_bench.S,
 * blk_bad.S).
 */
#ifndef HEARTH_BLK_H
#define HEARTH_BLK_H

/* Feature bits (5.2.3). */
#define VIRTIO_BLK_F_SIZE_MAX		1
#define VIRTIO_BLK_F_SEG_MAX		2
#define VIRTIO_BLK_F_RO			5
#define VIRTIO_BLK_F_BLK_SIZE		6
#define VIRTIO_BLK_F_FLUSH		9

/* Config space (5.2.4), offsets into it. */
#define BLK_CFG_CAPACITY		0
#define BLK_CFG_SIZE_MAX		8
#define BLK_CFG_SEG_MAX			12
#define BLK_CFG_BLK_SIZE		20

/* Request types and status values (5.2.6). */
#define VIRTIO_BLK_T_IN			0
#define VIRTIO_BLK_T_OUT		1
#define VIRTIO_BLK_T_FLUSH		4
#define VIRTIO_BLK_T_GET_ID		8
#define VIRTIO_BLK_S_OK			0
#define VIRTIO_BLK_S_IOERR		1
#define VIRTIO_BLK_S_UNSUPP		2
#define BLK_STATUS_UNTOUCHED		0xff	/* what the status byte holds before */

#define BLK_HDR_SIZE			16
#define BLK_ID_BYTES			20
#define SECTOR_SIZE			512
#define BLK_QUEUE			0
#define BLK_MAX_SEGS			64	/* data descriptors per request, at most */
#define BLK_SEG_BYTES_MAX		4096	/* bytes per data descriptor, at most */
#define BLK_MAX_REQ			(BLK_MAX_SEGS * BLK_SEG_BYTES_MAX)
#define BLK_WAIT_MS			5000	/* for one request */

#endif /* HEARTH_BLK_H */
