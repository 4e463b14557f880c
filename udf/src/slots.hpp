// Redis Cluster routing: hash slots and the slot -> node table read from CLUSTER SLOTS.
#pragma once

#include <hiredis.h>

#include <string>
#include <string_view>
#include <vector>

namespace nekrs_ml {

constexpr unsigned kSlotCount = 16384;

unsigned slot_of(std::string_view key);

class SlotMap {
public:
  SlotMap();
  // Replaces the table with a CLUSTER SLOTS reply. Nodes that report no host ("" or "?") are
  // reached at `queried_host`, the host that answered. Returns false if the reply is malformed.
  bool load(const redisReply& reply, const std::string& queried_host);
  void assign(unsigned slot, const std::string& address);
  // "host:port" of the node serving the slot; empty when the slot has no known node.
  const std::string& owner(unsigned slot) const;

private:
  int node_index(const std::string& address);

  std::vector<std::string> nodes_;
  std::vector<int> owners_; // index into nodes_ per slot, -1 when unknown
};

} // namespace nekrs_ml
