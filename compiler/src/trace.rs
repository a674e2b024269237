//! Packet interpreter over the IR (TODO).
