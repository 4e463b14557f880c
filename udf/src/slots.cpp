#include "slots.hpp"

#include "address.hpp"
#include "nekrs_ml/client.hpp"

#include <algorithm>
#include <cstdint>

namespace nekrs_ml {

namespace {

// CRC16/XMODEM (polynomial 0x1021, initial value 0), as in the Redis Cluster specification.
std::uint16_t crc16_xmodem(std::string_view data) {
  std::uint16_t crc = 0;
  for (unsigned char byte : data) {
    crc ^= static_cast<std::uint16_t>(byte << 8);
    for (int bit = 0; bit < 8; ++bit) {
      crc = (crc & 0x8000) ? static_cast<std::uint16_t>((crc << 1) ^ 0x1021)
                           : static_cast<std::uint16_t>(crc << 1);
    }
  }
  return crc;
}

// Keys sharing a non-empty "{tag}" land in the same slot, so one rank's keys stay on one shard.
std::string_view hash_tag(std::string_view key) {
  const auto open = key.find('{');
  if (open == std::string_view::npos) return key;
  const auto close = key.find('}', open + 1);
  if (close == std::string_view::npos || close == open + 1) return key;
  return key.substr(open + 1, close - open - 1);
}

bool is_integer(const redisReply* reply) { return reply->type == REDIS_REPLY_INTEGER; }

} // namespace

unsigned slot_of(std::string_view key) { return crc16_xmodem(hash_tag(key)) % kSlotCount; }

unsigned key_slot(const std::string& key) { return slot_of(key); }

SlotMap::SlotMap() : owners_(kSlotCount, -1) {}

bool SlotMap::load(const redisReply& reply, const std::string& queried_host) {
  if (reply.type != REDIS_REPLY_ARRAY) return false;
  std::vector<int> owners(kSlotCount, -1);
  // Each entry: [first slot, last slot, [host, port, id, ...] of the master, replicas...].
  for (std::size_t i = 0; i < reply.elements; ++i) {
    const redisReply* range = reply.element[i];
    if (range->type != REDIS_REPLY_ARRAY || range->elements < 3) return false;
    const redisReply* first = range->element[0];
    const redisReply* last = range->element[1];
    const redisReply* master = range->element[2];
    if (!is_integer(first) || !is_integer(last) || master->type != REDIS_REPLY_ARRAY ||
        master->elements < 2 || master->element[0]->type != REDIS_REPLY_STRING ||
        !is_integer(master->element[1]) || first->integer < 0 || last->integer < first->integer ||
        last->integer >= kSlotCount) {
      return false;
    }
    std::string host(master->element[0]->str, master->element[0]->len);
    if (host.empty() || host == "?") host = queried_host;
    const int node =
        node_index(format_tcp_address(host, static_cast<int>(master->element[1]->integer)));
    std::fill(owners.begin() + first->integer, owners.begin() + last->integer + 1, node);
  }
  owners_ = std::move(owners);
  return true;
}

void SlotMap::assign(unsigned slot, const std::string& address) {
  owners_.at(slot) = node_index(address);
}

const std::string& SlotMap::owner(unsigned slot) const {
  static const std::string unknown;
  const int node = owners_.at(slot);
  return node < 0 ? unknown : nodes_[static_cast<std::size_t>(node)];
}

int SlotMap::node_index(const std::string& address) {
  const auto found = std::find(nodes_.begin(), nodes_.end(), address);
  if (found != nodes_.end()) return static_cast<int>(found - nodes_.begin());
  nodes_.push_back(address);
  return static_cast<int>(nodes_.size() - 1);
}

} // namespace nekrs_ml
