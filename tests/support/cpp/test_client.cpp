// nekrs_ml::Client against a running server, configured from the environment
// (NEKRS_ML_ADDRESSES, NEKRS_ML_PASSWORD_FILE, NEKRS_ML_MODE); skipped when none is set.
#include "check.hpp"
#include "nekrs_ml/client.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <vector>

using namespace nekrs_ml;

namespace {

constexpr int kSkipped = 77;

void tensors(Client& client) {
  std::vector<double> data(12);
  std::iota(data.begin(), data.end(), 0.5);
  client.put_tensor<double>("cpp:{t}:x", {3, 4}, data.data());

  std::vector<double> out(12);
  const TensorHeader header =
      client.get_tensor("cpp:{t}:x", out.data(), out.size() * sizeof(double));
  CHECK(header.describe() == "float64[3, 4]" && out == data);

  std::vector<double> small(5);
  CHECK_THROWS(TensorFormatError, "holds float64[3, 4] (96 bytes) but the buffer has 40 bytes",
               client.get_tensor("cpp:{t}:x", small.data(), small.size() * sizeof(double)));
  CHECK_THROWS(TensorFormatError, "float32 was expected",
               client.get_tensor("cpp:{t}:x", out.data(), 96, DType::float32));
  CHECK_THROWS(KeyNotFoundError, "key 'cpp:{t}:missing' does not exist",
               client.get_tensor("cpp:{t}:missing", out.data(), 96));
  client.set_string("cpp:{t}:text", "hello");
  CHECK_THROWS(TensorFormatError, "cpp:{t}:text",
               client.get_tensor("cpp:{t}:text", out.data(), 96));

  // Every failed read above left the connection in step with the server.
  std::vector<double> again(12);
  client.get_tensor("cpp:{t}:x", again.data(), again.size() * sizeof(double), DType::float64);
  CHECK(again == data);

  const std::int32_t scalar = 42;
  client.put_tensor<std::int32_t>("cpp:{t}:scalar", {}, &scalar);
  std::int32_t read_back = 0;
  CHECK(client.get_tensor("cpp:{t}:scalar", &read_back, sizeof read_back).shape.empty());
  CHECK(read_back == 42);

  client.put_tensor<float>("cpp:{t}:empty", {0, 3}, nullptr);
  CHECK(client.get_tensor("cpp:{t}:empty", nullptr, 0).count() == 0);
}

// Large enough that the socket moves it in many pieces, in both directions.
void large_tensor(Client& client) {
  std::vector<float> data(4 << 20);
  std::iota(data.begin(), data.end(), 1.0f);
  client.put_tensor<float>("cpp:{t}:large", {4, 1 << 20}, data.data());
  std::vector<float> small(16);
  CHECK_THROWS(TensorFormatError, "cpp:{t}:large",
               client.get_tensor("cpp:{t}:large", small.data(), small.size() * sizeof(float)));
  std::vector<float> out(data.size());
  client.get_tensor("cpp:{t}:large", out.data(), out.size() * sizeof(float), DType::float32);
  CHECK(out == data);
}

void pipelined(Client& client) {
  std::vector<std::vector<std::uint16_t>> arrays;
  std::vector<TensorView> views;
  for (std::uint16_t rank = 0; rank < 8; ++rank) arrays.emplace_back(100, rank);
  for (std::uint16_t rank = 0; rank < 8; ++rank) {
    const std::string key = "cpp:{r" + std::to_string(rank) + "}:x";
    views.push_back(TensorView{key, TensorHeader{DType::uint16, {100}}, arrays[rank].data()});
  }
  client.put_tensors(views);
  for (const TensorView& view : views) {
    std::vector<std::uint16_t> out(100);
    client.get_tensor(view.key, out.data(), 200, DType::uint16);
    CHECK(std::equal(out.begin(), out.end(), static_cast<const std::uint16_t*>(view.data)));
  }
}

void pipelined_gets_and_commands(Client& client) {
  const std::vector<float> a{1, 2, 3}, b{4, 5};
  client.put_tensors({TensorView{"cpp:{p}:a", TensorHeader{DType::float32, {3}}, a.data()},
                      TensorView{"cpp:{p}:b", TensorHeader{DType::float32, {2}}, b.data()}});
  std::vector<std::vector<float>> out(2);
  const auto headers = client.get_tensors({"cpp:{p}:a", "cpp:{p}:b"},
                                          [&](std::size_t i, const TensorHeader& header) {
                                            out[i].resize(header.shape[0]);
                                            return static_cast<void*>(out[i].data());
                                          });
  CHECK(headers.size() == 2 && headers[1].shape == std::vector<std::uint64_t>{2});
  CHECK(out[0] == a && out[1] == b);
  client.delete_key("cpp:{p}:missing");
  CHECK_THROWS(KeyNotFoundError, "cpp:{p}:missing",
               client.get_tensors({"cpp:{p}:a", "cpp:{p}:missing"},
                                  [&](std::size_t i, const TensorHeader&) {
                                    return static_cast<void*>(out[i].data());
                                  }));

  // A transaction and a command outside it, in one round trip; errors come back as replies.
  client.delete_key("cpp:{p}:list");
  const std::string value = "payload";
  const auto replies = client.pipeline({
      Command::of("cpp:{p}:list", {"MULTI"}),
      Command{"cpp:{p}:list", {{"RPUSH"}, {"cpp:{p}:list"}, {"pay", "load"}}},
      Command::of("cpp:{p}:list", {"EXEC"}),
      Command::of("cpp:{p}:a", {"LLEN", "cpp:{p}:a"}),
      Command::of("cpp:{p}:list", {"LRANGE", "cpp:{p}:list", "0", "-1"}),
  });
  CHECK(replies.size() == 5 && replies[1].text == "QUEUED");
  CHECK(replies[2].type == CommandReply::Type::array && replies[2].elements[0].integer == 1);
  CHECK(replies[3].is_error() && replies[3].text.find("WRONGTYPE") == 0);
  CHECK(replies[4].elements.size() == 1 && replies[4].elements[0].text == value);
}

void keys_and_lists(Client& client) {
  client.delete_key("cpp:{k}:list");
  CHECK(client.list_push("cpp:{k}:list", "a") == 1 && client.list_push("cpp:{k}:list", "b") == 2);
  CHECK(client.list_length("cpp:{k}:list") == 2);
  client.list_trim("cpp:{k}:list", 1, -1);
  CHECK(client.list_range("cpp:{k}:list", 0, -1) == std::vector<std::string>{"b"});
  CHECK(client.exists("cpp:{k}:list") && client.poll_key("cpp:{k}:list", 0.1));
  CHECK(!client.poll_key("cpp:{k}:missing", 0.05));
  CHECK(client.delete_key("cpp:{k}:list") == 1 && !client.exists("cpp:{k}:list"));

  client.delete_key("cpp:{k}:n");
  CHECK(client.increment("cpp:{k}:n") == 1 && client.increment("cpp:{k}:n", 4) == 5);
  std::string value;
  CHECK(!client.get_string("cpp:{k}:missing", value));
  client.set_string("cpp:{k}:s", std::string("with\0nul", 8));
  CHECK(client.get_string("cpp:{k}:s", value) && value == std::string("with\0nul", 8));
  CHECK(client.command({"INCRBY", "cpp:{k}:n", "1"}, "cpp:{k}:n") == "6");
  CHECK(client.command({"GET", "cpp:{k}:missing"}, "cpp:{k}:missing").empty());
  CHECK_THROWS(ServerError, "cpp:{k}:s", client.command({"LLEN", "cpp:{k}:s"}, "cpp:{k}:s"));
}

} // namespace

int main() {
  if (std::getenv("NEKRS_ML_ADDRESSES") == nullptr) {
    std::cout << "test_client: skipped (NEKRS_ML_ADDRESSES is not set)\n";
    return kSkipped;
  }
  Client connected(Client::options_from_env());
  Client client(std::move(connected));
  tensors(client);
  large_tensor(client);
  pipelined(client);
  pipelined_gets_and_commands(client);
  keys_and_lists(client);
  return check_report("test_client");
}
