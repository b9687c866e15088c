// Package tunnel is the data plane shared by the relay and the agent: the
// control-connection upgrade (both sides), the one yamux configuration both
// ends use, typed streams, and Join, the only bidirectional byte pipe in the
// code base.
package tunnel
