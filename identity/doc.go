// Package identity is Palisade's SPIFFE certificate authority: it signs X.509-SVIDs
// and JWT-SVIDs, rotates its own roots and JWT keys, publishes the trust bundle and
// issues single-use bootstrap tokens. It holds no network code; the CA service and
// the agent build on it.
//
// # Keys and rotation
//
// Key material lives in slots, as in SPIRE: a current slot that signs, a prepared
// next slot, and retired slots. A slot holds a self-signed ECDSA P-256 root (absent
// when a plugged CA signs X.509-SVIDs) and an ES256 JWT key, and lives for CATTL.
// At half of the current slot's life the next one is generated and published in the
// bundle; at three quarters it becomes current; a retired slot leaves the bundle when
// it expires. Nothing signed outlives its slot, so every SVID stays verifiable for its
// whole life, and bundle consumers (polling every RefreshHint or watching Changed)
// learn a root a quarter of CATTL before anything is signed with it.
//
// # On disk
//
// DataDir/ca (mode 0700) holds state.json, the journal naming the slots and the
// bundle sequence number, and per slot slot-N-root.pem, slot-N-root.key and
// slot-N-jwt.key (mode 0600). Files are replaced atomically, and state.json is
// written last, so a crash at any point restarts into the last committed state.
// Only one process may own a data directory; replicas need leader election or
// their own directory.
//
// # Plugged CA
//
// With an operator CA in Istio's cacerts layout, X.509-SVIDs chain leaf → ca-cert →
// cert-chain → a root of root-cert.pem, and the bundle carries root-cert.pem's
// roots. The CA never rotates that certificate; Tick warns when less than a quarter
// of its life is left. JWT keys keep rotating in slots. Switching a data directory
// from self-managed to plugged keeps the old roots trusted until they expire; back
// to self-managed, a root is generated at once.
package identity
