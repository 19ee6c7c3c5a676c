// Package faultproxy is a TCP proxy that injects faults between a client
// and an upstream server, in the spirit of toxiproxy, for ferry's
// integration tests and demo.
//
// A Proxy listens on 127.0.0.1 on a port of its own and forwards every
// connection it accepts to its upstream address, dialled afresh for each
// connection. Faults are armed at run time and act on the client→server
// stream, where ferry's data flows:
//
//   - CutAfter and CutNextConn forward an exact number of bytes and then
//     close both sides of the connection, as a dropped link would.
//   - FlipByte inverts one byte in transit, as a corrupting middlebox or
//     faulty NIC would.
//   - Stall stops forwarding in both directions until Release.
//   - Throttle limits the client→server rate of every connection.
//
// HoldDials and ReleaseDials keep new connections waiting, accepted but not
// yet dialled, while the server behind the proxy restarts.
//
// Offsets of CutAfter and FlipByte count client→server bytes over all
// connections from the moment the fault is armed; with one connection at a
// time they are offsets into that connection's stream. Counters of bytes
// forwarded, in total and per connection, WaitBytes and WaitConnBytes let
// a test act at a chosen point of a transfer without sleeping.
//
// NewTLS makes a proxy that terminates TLS on both sides: it serves
// clients a key of its own (Fingerprint) and speaks TLS to the upstream
// without checking its key, so that every fault, counter and RecordHead
// acts on the plaintext stream. New relays bytes as they are: through it,
// a test sees what the network sees.
//
// A Proxy is safe for concurrent use. The zero value is not usable; call
// New.
package faultproxy
